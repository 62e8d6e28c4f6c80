//! What the bus's tasks share: the host, the log and the settings, the
//! running consumers and their gauges, the quarantined plugins and the
//! recent failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::config::DurableConfig;
use crate::failures;
use crate::read_ahead::ReadAhead;
use crate::task::Task;
use plugbus_log::{DeadLetterDepths, EventLog, Partition, Quarantine};
use plugbus_runtime::Delivery;
use plugbus_runtime::host::Host;

/// A consumer's gauges, kept as it works.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Events read past the cursor (finished or not).
    pub(crate) behind: AtomicU64,
    /// Events appended and not read yet: counted up by appends, down by
    /// reads, and set to 0 when a read finds nothing more.
    pub(crate) unread: AtomicU64,
    pub(crate) pending_events: AtomicU64,
    pub(crate) pending_bytes: AtomicU64,
}

impl Gauges {
    /// Counts `n` events read.
    pub(crate) fn read(&self, n: u64) {
        let _ = self
            .unread
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Publishes the line's numbers.
    pub(crate) fn show(&self, line: &ReadAhead) {
        self.behind.store(line.behind() as u64, Ordering::Relaxed);
        self.pending_events
            .store(line.pending_events() as u64, Ordering::Relaxed);
        self.pending_bytes
            .store(line.pending_bytes(), Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub(crate) host: Arc<Host>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) config: DurableConfig,
    /// By tenant, the appends of its events through this bus.
    pub(crate) tenants: Mutex<HashMap<String, Arc<Appends>>>,
    /// The running consumers' supervisors, by (tenant, plugin, partition).
    pub(crate) consumers: Mutex<HashMap<PartKey, tokio::task::JoinHandle<()>>>,
    /// The running consumers' gauges, by tenant, then (plugin, partition).
    pub(crate) gauges: Mutex<HashMap<String, PartitionGauges>>,
    /// How many partitions each tenant's events are split into (the
    /// log's [`partitions`](plugbus_log::EventStore::partitions)).
    pub(crate) partitions: Partition,
    /// How often each task was restarted.
    pub(crate) restarts: Mutex<BTreeMap<Task, u64>>,
    pub(crate) stop: watch::Sender<bool>,
    /// Every delivery the consumers make, for whoever listens.
    pub(crate) deliveries: broadcast::Sender<Delivery>,
    /// The quarantined plugins, and what wakes each one.
    pub(crate) quarantined: Mutex<HashMap<PluginKey, (Quarantine, Arc<Notify>)>>,
    /// Per tenant, its most recent failed deliveries.
    pub(crate) failures: Mutex<failures::Failures>,
    /// The consumers' leases.
    pub(crate) leases: crate::lease::Leases,
    /// The plugins with dead letters as the log counted them lately, and
    /// when it was asked (see [`Inner::may_have_redrives`]).
    pub(crate) dead_letters: Mutex<Option<(std::time::Instant, Arc<DeadLetterDepths>)>>,
}

/// How old the dead-letter counts consumers look at may be.
const DEAD_LETTERS_FRESH: Duration = Duration::from_millis(250);

/// The appends of a tenant's events through this bus (publishes, and
/// events its plugins emit), counted, each of them waking the tenant's
/// consumers.
#[derive(Debug, Default)]
pub(crate) struct Appends {
    count: AtomicU64,
    woken: Notify,
}

impl Appends {
    /// Events of the tenant were appended (they are in the log now):
    /// counted, then the consumers waiting are woken.
    pub(crate) fn appended(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.woken.notify_waiters();
    }

    /// How many appends there were so far: a read of the log that begins
    /// after this is taken sees every event they appended.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Wakes at the next append (once enabled or polled).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.woken.notified()
    }
}

/// A plugin by (tenant, name).
pub(crate) type PluginKey = (String, String);

/// The gauges of a tenant's consumers, by (plugin, partition).
pub(crate) type PartitionGauges = HashMap<(String, Partition), Arc<Gauges>>;

/// A plugin in one partition of its tenant's events: what one consumer
/// delivers, under one lease.
pub(crate) type PartKey = (String, String, Partition);

impl Inner {
    /// Keeps the failed deliveries in `reports` among their tenants'
    /// recent failures, and tells every delivery to whoever listens.
    pub(crate) fn delivered(&self, reports: &[(Delivery, plugbus_runtime::dispatch::Effects)]) {
        if reports.iter().any(|(d, _)| d.outcome.failure().is_some()) {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            for (delivery, _) in reports {
                failures.record(delivery, plugbus_core::clock::now_rfc3339);
            }
        }
        if self.deliveries.receiver_count() > 0 {
            for (delivery, _) in reports {
                let _ = self.deliveries.send(delivery.clone());
            }
        }
    }

    /// Whether `plugin` of `tenant` may have dead letters to redrive: on a
    /// log one host has alone, only a plugin with dead letters, as the log
    /// counts them without reading (lately: at most
    /// [`DEAD_LETTERS_FRESH`] ago); on a shared log, always (its counts
    /// may lag another host's dead letters). A redrive asks for a dead
    /// letter, so a plugin without any has nothing to redrive, and its
    /// consumer need not ask the log.
    pub(crate) fn may_have_redrives(&self, tenant: &str, plugin: &str) -> bool {
        if self.leases.shared {
            return true;
        }
        let depths = {
            let mut cached = self
                .dead_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &*cached {
                Some((at, depths)) if at.elapsed() < DEAD_LETTERS_FRESH => depths.clone(),
                _ => {
                    let depths = Arc::new(self.log.dead_letter_depths());
                    *cached = Some((std::time::Instant::now(), depths.clone()));
                    depths
                }
            }
        };
        depths
            .get(&(tenant.to_owned(), plugin.to_owned()))
            .is_some_and(|n| *n > 0)
    }

    /// The appends of `tenant`'s events through this bus.
    pub(crate) fn appends(&self, tenant: &str) -> Arc<Appends> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Counts events of each (tenant, partition) about to be appended
    /// (`more`) in its consumers' unread events, or takes back those that
    /// were not (refused, or duplicates).
    pub(crate) fn appending(&self, events: &HashMap<(&str, Partition), u64>, more: bool) {
        let gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        for ((tenant, partition), n) in events {
            let of_partition = gauges
                .get(*tenant)
                .into_iter()
                .flat_map(HashMap::iter)
                .filter(|((_, p), _)| p == partition)
                .map(|(_, g)| g);
            for plugin in of_partition {
                if more {
                    plugin.unread.fetch_add(*n, Ordering::Relaxed);
                } else {
                    plugin.read(*n);
                }
            }
        }
    }
    /// Forgets the gauges of a consumer that ended for good.
    pub(crate) fn drop_gauges(&self, key: &PartKey, gauges: &Arc<Gauges>) {
        let (tenant, plugin, partition) = key;
        let mut all = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plugins) = all.get_mut(tenant) {
            let at = (plugin.clone(), *partition);
            if plugins.get(&at).is_some_and(|g| Arc::ptr_eq(g, gauges)) {
                plugins.remove(&at);
            }
            if plugins.is_empty() {
                all.remove(tenant);
            }
        }
    }

    /// Logs and counts a restart of `task`.
    pub(crate) fn restarted(&self, task: &Task, reason: &str, wait: Duration) {
        *self
            .restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(task.clone())
            .or_insert(0) += 1;
        // The reason may quote a log error or a panic: one line, bounded.
        let mut reason: String = reason.escape_debug().collect();
        if reason.len() > 1024 {
            let mut end = 1024;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        match task {
            Task::Consumer { tenant, plugin } => {
                tracing::error!(
                    tenant = %tenant,
                    plugin = %plugin,
                    "the plugin's consumer stopped unexpectedly ({reason}); restarting it from its cursor in {wait:?}"
                );
                metrics::counter!(
                    "plugbus_consumer_restarts_total",
                    "tenant" => tenant.clone(),
                    "plugin" => plugin.clone()
                )
                .increment(1);
            }
            other => {
                tracing::error!(
                    task = other.name(),
                    "a task of the durable bus stopped unexpectedly ({reason}); restarting it in {wait:?}"
                );
                metrics::counter!("plugbus_task_restarts_total", "task" => other.name())
                    .increment(1);
            }
        }
    }
}
