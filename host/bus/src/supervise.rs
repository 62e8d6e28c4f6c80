//! The bus's supervised tasks at work: the supervisor that restarts a
//! task that stopped, the consumers it starts, retention and the reload
//! watcher.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::consumer::Consumer;
use crate::state::{Gauges, Inner, PartKey};
use crate::task::{AbortOnDrop, Task, join_failure, restart_backoff};
use plugbus_log::{Retention, Seq};

/// Applies the retention policy every `retention_interval`, keeping every
/// event a loaded plugin has not finished with. Ends (`Ok`) at once when
/// there is no retention policy; otherwise runs until aborted.
pub(crate) async fn retain(inner: Arc<Inner>) -> Result<(), String> {
    let retention = inner.config.retention;
    if retention == Retention::default() {
        return Ok(());
    }
    let period = inner
        .config
        .retention_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(24 * 60 * 60));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let live = inner
            .host
            .plugins()
            .into_iter()
            .map(|p| (p.tenant, p.name))
            .chain(inner.host.loading())
            .collect();
        match inner.log.prune(retention, live).await {
            Ok(pruned) => {
                if pruned.deleted > 0 {
                    tracing::info!(deleted = pruned.deleted, "retention deleted old events");
                }
                if pruned.held_back {
                    tracing::warn!(
                        "the event log is over its size limit, but the oldest events are not yet handled by every plugin"
                    );
                }
            }
            Err(e) => tracing::error!("retention failed: {e}"),
        }
    }
}

/// Starts a consumer for every plugin the host loads, and when the host's
/// reload events were missed, for every plugin it has. `events` is the
/// first run's receiver, subscribed before the first consumers started; a
/// restarted watcher subscribes again and looks at every plugin, since
/// loads may have happened while it was down. Ends (`Ok`) when the host
/// stops sending reload events.
pub(crate) async fn watch_reloads(
    inner: Arc<Inner>,
    events: Option<broadcast::Receiver<plugbus_runtime::ReloadEvent>>,
) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = match events {
        Some(events) => events,
        None => {
            let events = inner.host.reload_events();
            for plugin in inner.host.plugins() {
                inner.ensure_consumers(&plugin.tenant, &plugin.name);
            }
            events
        }
    };
    loop {
        match events.recv().await {
            Ok(plugbus_runtime::ReloadEvent::Loaded { tenant, plugin, .. }) => {
                inner.ensure_consumers(&tenant, &plugin);
            }
            Ok(_) => {}
            // Missed events: look at what is loaded now.
            Err(RecvError::Lagged(_)) => {
                for plugin in inner.host.plugins() {
                    inner.ensure_consumers(&plugin.tenant, &plugin.name);
                }
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Runs the task `start` makes (given the number of runs before), and
/// while the bus is not stopping, makes and runs it again after
/// [`restart_backoff`] whenever it fails or panics. A task that ends with
/// `Ok` is finished (the bus stops, its plugin was unloaded, its source
/// closed) and is not restarted.
pub(crate) async fn supervise<F, Fut>(inner: Arc<Inner>, task: Task, mut start: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut stop = inner.stop.subscribe();
    let mut runs = 0u32;
    let mut in_a_row = 0u32;
    loop {
        let started = std::time::Instant::now();
        let mut running = AbortOnDrop(tokio::spawn(start(runs)));
        runs = runs.saturating_add(1);
        let reason = match (&mut running.0).await {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(e) => join_failure(e),
        };
        if *stop.borrow() {
            return;
        }
        if started.elapsed() >= Duration::from_secs(60) {
            in_a_row = 0;
        }
        let wait = restart_backoff(in_a_row);
        in_a_row = in_a_row.saturating_add(1);
        inner.restarted(&task, &reason, wait);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Inner {
    /// Starts the consumers of every partition of `plugin` of `tenant`
    /// that are not running, from their cursors.
    pub(crate) fn ensure_consumers(self: &Arc<Self>, tenant: &str, plugin: &str) {
        for partition in 0..self.partitions {
            self.ensure_consumer(&(tenant.to_owned(), plugin.to_owned(), partition), None);
        }
    }

    /// Starts the consumer of `key` (supervised) from `position`, or
    /// from its cursor, unless it is running.
    pub(crate) fn ensure_consumer(self: &Arc<Self>, key: &PartKey, position: Option<Seq>) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if consumers.get(key).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let gauges = Arc::new(Gauges::default());
        self.gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.0.clone())
            .or_default()
            .insert((key.1.clone(), key.2), gauges.clone());
        let inner = self.clone();
        let task = Task::Consumer {
            tenant: key.0.clone(),
            plugin: key.1.clone(),
        };
        let running = key.clone();
        let supervisor = supervise(self.clone(), task, move |runs| {
            let consumer = Consumer::new(&inner, &running, gauges.clone());
            let from = if runs == 0 { position } else { None };
            consumer.run(from)
        });
        consumers.insert(key.clone(), tokio::spawn(supervisor));
    }
}
