//! The host: configuration, loading a plugins directory, and publishing
//! events — each routed to its tenant's subscribed plugins, and every event
//! those plugins emit routed the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::cache::{CacheStats, CompileCache};
use crate::dispatch::{Delivery, InstanceMode, Plugin, Replies};
use crate::engine::{Allocation, EngineError, EngineOptions};
use crate::loader::{self, LoadContext, LoadError, PluginQuotas};
use crate::registry::Registry;
use crate::reload::{PluginStatus, ReloadError, ReloadEvent, Reloader, Settling, Watcher};
use crate::sandbox::Bounds;
use crate::stats::{Stats, StatsSnapshot};
use plugbus_core::event::Event;
use plugbus_core::manifest::{Limits, Subscription};

/// The host's configuration. [`HostConfig::default`] is what `plugbus`
/// runs with when nothing else is said.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The limits of a plugin whose manifest does not set them.
    pub default_limits: Limits,
    /// How many emits may separate an event from the root of its chain
    /// (default 16). The emit that would exceed it fails.
    pub max_chain_depth: u32,
    /// The most events one delivery may emit (default 100).
    pub max_emits_per_delivery: usize,
    /// The most events the whole chain of one published event may emit
    /// (default 10,000), so that fan-out cannot multiply without bound.
    pub max_events_per_chain: usize,
    /// The longest log message a plugin may write, in bytes (default 4 KiB);
    /// longer ones are truncated.
    pub max_log_bytes: usize,
    /// The most log lines a plugin may write in one delivery (default 256).
    pub max_log_lines_per_delivery: usize,
    /// The most bytes of stdout and stderr kept per delivery (default 64 KiB).
    pub max_output_bytes_per_delivery: usize,
    /// The largest component file accepted (default 64 MiB).
    pub max_plugin_bytes: u64,
    /// Whether instances are reused across events.
    pub instance_mode: InstanceMode,
    /// How many deliveries of one plugin run at once, each on a blocking
    /// thread with an instance of its own (default: the number of CPUs).
    /// Deliveries beyond that wait in the plugin's queue, and a thread that
    /// finishes one takes the next, so that under load one thread serves a
    /// whole batch. Also the most idle instances a plugin keeps.
    pub plugin_concurrency: usize,
    /// The engine's settings.
    pub engine: EngineOptions,
    /// The directory of the compile cache, or `None` to compile every
    /// plugin on every load (default `None`). It must not lie inside the
    /// plugins directory; it is created private to the host's user.
    pub compile_cache: Option<PathBuf>,
    /// How many plugins are compiled at once during reloads (default 2),
    /// so that tenants uploading large components take at most that many
    /// threads from dispatch, and one tenant's large compile does not hold
    /// back the reloads of the others.
    pub max_concurrent_compiles: usize,
    /// Components larger than this that must be compiled (they are not in
    /// the compile cache) are compiled in the background by
    /// [`Host::load_dir`] within a tokio runtime, as a hot reload is: it
    /// returns without them, and each serves once compiled (default
    /// `None`: every plugin is loaded before `load_dir` returns; `plugbus
    /// serve` sets 4 MiB, so that Python and JavaScript components, 10-20
    /// MB and 25-45 s to compile, do not hold a first start).
    pub background_compile_bytes: Option<u64>,
    /// How long a changed file must stay quiet before it is read (default
    /// 10 ms): a rename is one event, so it is picked up at once.
    pub reload_quiet: Duration,
    /// How long a file that is being written (modified and not yet closed)
    /// must stay quiet before it is read anyway (default 1 s), for writers
    /// that keep a file open.
    pub reload_write_timeout: Duration,
    /// The most events passed to a plugin in one call of its `handle-batch`
    /// export (default 128); 1 turns batching off. A batch holds whatever
    /// is waiting for the plugin: the host never waits for one to fill.
    pub max_batch_events: usize,
    /// The most bytes of encoded events in one batch (default 1 MiB, at
    /// most 1 GiB), and never more than a quarter of the plugin's memory
    /// limit; a larger event goes alone, through `handle`.
    pub max_batch_bytes: usize,
    /// The longest state key a plugin may write, in bytes (default 512).
    pub max_state_key_bytes: usize,
    /// The largest state value a plugin may write, in bytes (default 1 MiB).
    pub max_state_value_bytes: usize,
    /// The most bytes of state keys and values one delivery may write
    /// (default 4 MiB).
    pub max_state_bytes_per_delivery: usize,
    /// The most bytes of events one delivery may emit (default 4 MiB),
    /// counted by [`crate::batch::event_bytes`]: every attribute value,
    /// the data, and each extension's name and value, the host's own
    /// attributes included. An emit past it is refused to the plugin (its
    /// `emit` gets an error naming the limit) and counted
    /// (`plugbus_emits_refused_total{reason="emit_bytes"}`); nothing of
    /// it is kept. Each event also stays within the per-event limits of
    /// [`Event::validate`].
    pub max_emit_bytes_per_delivery: usize,
    /// The largest event the event log stores, in bytes of its stored form
    /// (its CloudEvents JSON): the log's `EventStore::max_event_bytes`
    /// (a NATS server's `max_payload` less 1 KiB), `None` (the default)
    /// for a log without a bound of its own. An emit of a larger event is
    /// refused to the plugin (its `emit` gets an error naming the limit)
    /// and counted (`plugbus_emits_refused_total{reason="event_bytes"}`),
    /// so that no commit holds an event the log cannot store.
    pub max_event_bytes: Option<usize>,
    /// The most bytes one batch's pending commit may hold (default 16 MiB):
    /// the emitted events and state writes of the successful deliveries of
    /// one batch (a call of `handle-batch`, or the events the durable bus
    /// commits together), counted like
    /// [`max_emit_bytes_per_delivery`](Self::max_emit_bytes_per_delivery)
    /// and [`max_state_bytes_per_delivery`](Self::max_state_bytes_per_delivery).
    /// A batch ends early, and its other events go into the next one, when
    /// one more delivery at those limits would not fit; an emit or state
    /// write past it is refused and counted (`reason="commit_bytes"`),
    /// which happens only when it is set below the sum of those two.
    pub max_batch_commit_bytes: usize,
    /// The longest failure message of guest origin kept (default 4 KiB):
    /// handler errors, trap and panic text are cut at this many bytes, with
    /// a marker, when the failure is created, so that they are bounded
    /// wherever they are stored, exported or printed.
    pub max_error_bytes: usize,
    /// The operator's ceilings of the limits a manifest may ask for
    /// (default [`Limits::DEFAULT_CEILINGS`]: 1,000,000,000 fuel, 256 MiB,
    /// 30 s). A manifest above one is refused at load, naming the key and
    /// the ceiling; each ceiling must be at least
    /// [`default_limits`](Self::default_limits)' value, or [`Host::new`]
    /// fails.
    pub max_limits: Limits,
    /// Plugins' outbound HTTP requests: the limits on each, the private
    /// networks allowed, and every tenant's ceiling of the origins its
    /// plugins' manifests may allow (default: nothing allowed).
    pub outbound: crate::outbound::OutboundConfig,
    /// The largest manifest file accepted, in bytes (default 64 KiB).
    pub max_manifest_bytes: u64,
    /// The most plugins a tenant may have loaded (default 100), unless
    /// [`tenant_max_plugins`](Self::tenant_max_plugins) says otherwise.
    /// Past it a plugin is refused; plugins already loaded are never
    /// pushed out by new ones, and at a first load the first by name win.
    pub max_plugins_per_tenant: usize,
    /// Per-tenant quotas of plugins, by tenant name, in place of
    /// [`max_plugins_per_tenant`](Self::max_plugins_per_tenant) (default
    /// none). Every key must be a valid tenant name.
    pub tenant_max_plugins: std::collections::BTreeMap<String, usize>,
    /// Every tenant's secrets (default none). A plugin reads those of its
    /// tenant that its manifest grants (`[secrets] grant`), through the
    /// WIT interface `secrets`; the host scrubs their values from its log
    /// lines, output and error messages.
    pub secrets: plugbus_core::secrets::TenantSecrets,
    /// After how many events a reused instance is recycled: dropped, and a
    /// fresh one instantiated for the next event (default 100,000; 0
    /// never). Applies to [`InstanceMode::Reuse`].
    pub recycle_after_events: u64,
    /// The high-water mark of a reused instance's linear memory, in percent
    /// of its memory limit (default 75; 0 turns the rule off; above 100 acts
    /// as 100, which memory never exceeds): an instance whose memory ends
    /// [`recycle_high_water_deliveries`](Self::recycle_high_water_deliveries)
    /// deliveries in a row above it is recycled, so that a plugin that leaks
    /// memory slowly is not failed by its limit in the middle of an event.
    pub recycle_memory_percent: u8,
    /// How many deliveries in a row must end with an instance's memory above
    /// the high-water mark for it to be recycled (default 3; 0 acts as 1).
    pub recycle_high_water_deliveries: u32,
    /// How long a thread that delivers [`Host::publish`]'s events to a
    /// plugin waits for more once the plugin's queue is empty, before it
    /// ends (default 1 ms; zero: it ends at once). A publisher that keeps
    /// events flowing then hands them to a waiting thread instead of
    /// starting one per burst. The wait adapts per plugin: it halves after
    /// a wait in which nothing came, stops below an eighth of this (a
    /// plugin whose events come further apart does not hold a thread),
    /// starts again at an eighth when a thread had to be started within
    /// this time of the last one's end, and doubles back after a wait that
    /// ended with work.
    pub drainer_linger: Duration,
    /// The most such threads waiting at once, across every plugin of the
    /// host (default 64). Past it a thread whose queue is empty ends at
    /// once. Waiting threads are tokio blocking-pool threads, so this also
    /// bounds how many of that pool's threads they hold.
    pub max_lingering_drainers: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            default_limits: Limits::default(),
            max_chain_depth: 16,
            max_emits_per_delivery: 100,
            max_events_per_chain: 10_000,
            max_log_bytes: 4096,
            max_log_lines_per_delivery: 256,
            max_output_bytes_per_delivery: 64 * 1024,
            max_plugin_bytes: 64 * 1024 * 1024,
            instance_mode: InstanceMode::Reuse,
            plugin_concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            engine: EngineOptions::default(),
            compile_cache: None,
            max_concurrent_compiles: 2,
            background_compile_bytes: None,
            reload_quiet: Duration::from_millis(10),
            reload_write_timeout: Duration::from_secs(1),
            max_batch_events: 128,
            max_batch_bytes: 1024 * 1024,
            max_state_key_bytes: 512,
            max_state_value_bytes: 1024 * 1024,
            max_state_bytes_per_delivery: 4 * 1024 * 1024,
            max_emit_bytes_per_delivery: 4 * 1024 * 1024,
            max_event_bytes: None,
            max_batch_commit_bytes: 16 * 1024 * 1024,
            max_error_bytes: 4096,
            max_limits: Limits::DEFAULT_CEILINGS,
            outbound: crate::outbound::OutboundConfig::default(),
            max_manifest_bytes: 64 * 1024,
            max_plugins_per_tenant: 100,
            tenant_max_plugins: std::collections::BTreeMap::new(),
            secrets: plugbus_core::secrets::TenantSecrets::default(),
            recycle_after_events: 100_000,
            recycle_memory_percent: 75,
            recycle_high_water_deliveries: 3,
            drainer_linger: Duration::from_millis(1),
            max_lingering_drainers: 64,
        }
    }
}

impl HostConfig {
    /// The configuration for a fresh instance per event: that mode with the
    /// pooling allocator, sized for `total_instances` instances at once.
    pub fn fresh_instances(total_instances: u32) -> Self {
        let mut config = Self {
            instance_mode: InstanceMode::FreshPerEvent,
            ..Self::default()
        };
        config.engine.allocation = Allocation::Pooling {
            total_instances,
            max_memory_bytes: 256 * 1024 * 1024,
        };
        config
    }
}

/// Why the host could not be built or could not load a directory.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The compile cache cannot be used.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// The plugins directory could not be loaded, refreshed or watched.
    #[error(transparent)]
    Reload(#[from] ReloadError),
    /// The WASI and `host` imports could not be registered.
    #[error("cannot set up the plugin linker: {0}")]
    Linker(String),
    /// The loading settings are inconsistent (a ceiling below its default).
    #[error(transparent)]
    Settings(#[from] loader::SettingsError),
    /// A plugin's memory limit is larger than the pooling allocator's slots.
    #[error(
        "default memory limit of {limit} bytes is larger than the pooling allocator's {slot}-byte memories"
    )]
    PoolTooSmall {
        /// The limit.
        limit: u64,
        /// The slot size.
        slot: u64,
    },
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A delivery task died; this is a bug in the host, not in a plugin.
    #[error("internal error: a delivery task failed: {0}")]
    Internal(String),
}

/// What publishing one event did: every delivery of the event and of the
/// events its handlers emitted, in routing order, chain level by level.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// The deliveries.
    pub deliveries: Vec<Delivery>,
}

/// What the host knows about a loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin's name.
    pub name: String,
    /// Its version: a hash of its component and manifest.
    pub version: String,
    /// Its component file.
    pub path: PathBuf,
    /// Its subscriptions.
    pub subscribe: Vec<Subscription>,
    /// Its limits.
    pub limits: Limits,
}

impl PluginInfo {
    fn of(plugin: &Plugin) -> Self {
        Self {
            tenant: plugin.tenant().to_owned(),
            name: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            path: plugin.path().to_owned(),
            subscribe: plugin.manifest().subscribe.clone(),
            limits: plugin.manifest().limits,
        }
    }
}

/// What loading a plugins directory did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The plugins now loaded.
    pub loaded: Vec<PluginInfo>,
    /// The plugins and files that were refused, each naming its file.
    pub errors: Vec<LoadError>,
}

/// A plugbus host: loads tenants' plugins and delivers events to them.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use plugbus_core::Event;
/// use plugbus_runtime::{Host, HostConfig};
/// let host = Host::new(HostConfig::default())?;
/// let report = host.load_dir("plugins".as_ref())?;
/// for error in &report.errors {
///     eprintln!("{error}");
/// }
/// let event = Event::from_json(r#"{"specversion":"1.0","id":"evt-1","source":"/pos","type":"order.created","tenant":"acme-pos","data":{"total":12}}"#)?;
/// for delivery in host.publish(event).await?.deliveries {
///     println!("{} {:?}", delivery.plugin, delivery.outcome);
/// }
/// # Ok(()) }
/// ```
pub struct Host {
    config: HostConfig,
    bounds: Arc<Bounds>,
    stats: Arc<Stats>,
    /// The plugins events are routed to; the reloader swaps in new ones.
    pub(crate) registry: Arc<ArcSwap<Registry>>,
    reloader: Arc<Reloader>,
}

impl Host {
    /// Builds a host with no plugins, on the process's shared engine for
    /// `config.engine`.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let quotas = PluginQuotas {
            per_tenant: config.max_plugins_per_tenant,
            tenants: config.tenant_max_plugins.clone(),
        };
        loader::check_settings(&config.default_limits, &config.max_limits, &quotas)?;
        if let Allocation::Pooling {
            max_memory_bytes, ..
        } = config.engine.allocation
            && config.default_limits.memory_bytes > max_memory_bytes
        {
            return Err(HostError::PoolTooSmall {
                limit: config.default_limits.memory_bytes,
                slot: max_memory_bytes,
            });
        }
        let engine = crate::engine::shared(&config.engine)?;
        let linker =
            crate::bindings::linker(&engine).map_err(|e| HostError::Linker(format!("{e:#}")))?;
        let bounds = Arc::new(Bounds {
            state: Arc::new(crate::overlay::StateSlot::new(Arc::new(
                plugbus_core::state::MemoryState::new(),
            ))),
            recycle: crate::deadline::RecyclePolicy {
                after_events: config.recycle_after_events,
                memory_percent: config.recycle_memory_percent,
                high_water_deliveries: config.recycle_high_water_deliveries,
            },
            max_state_key_bytes: config.max_state_key_bytes,
            max_state_value_bytes: config.max_state_value_bytes,
            max_state_bytes_per_delivery: config.max_state_bytes_per_delivery,
            max_chain_depth: config.max_chain_depth,
            max_emits_per_delivery: config.max_emits_per_delivery,
            max_log_bytes: config.max_log_bytes,
            max_log_lines_per_delivery: config.max_log_lines_per_delivery,
            max_output_bytes_per_delivery: config.max_output_bytes_per_delivery,
            max_batch_events: config.max_batch_events.max(1),
            // The batch encoding addresses 4 GiB; stay well inside it.
            max_batch_bytes: config.max_batch_bytes.min(1 << 30),
            max_emit_bytes_per_delivery: config.max_emit_bytes_per_delivery,
            max_event_bytes: config.max_event_bytes,
            max_batch_commit_bytes: config.max_batch_commit_bytes,
            max_error_bytes: config.max_error_bytes,
            lingering: Arc::new(crate::dispatch::Lingering::new(
                config.drainer_linger,
                config.max_lingering_drainers,
            )),
        });
        let cache = match &config.compile_cache {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let loading = LoadContext {
            engine,
            linker,
            defaults: config.default_limits,
            max_limits: config.max_limits,
            max_plugin_bytes: config.max_plugin_bytes,
            max_manifest_bytes: config.max_manifest_bytes,
            outbound: Arc::new(config.outbound.clone()),
            bounds: bounds.clone(),
            stats: stats.clone(),
            mode: config.instance_mode,
            epoch_tick: config.engine.epoch_tick,
            fuel_metered: config.engine.consume_fuel,
            concurrency: config.plugin_concurrency.max(1),
            cache,
            pool_memory: match config.engine.allocation {
                Allocation::Pooling {
                    max_memory_bytes, ..
                } => Some(max_memory_bytes),
                Allocation::OnDemand => None,
            },
            background_compile_bytes: config.background_compile_bytes,
            compiling: Default::default(),
            secrets: config.secrets.clone(),
        };
        let registry = Arc::new(ArcSwap::from_pointee(Registry::default()));
        let settling = Settling {
            quiet: config.reload_quiet,
            write_timeout: config.reload_write_timeout,
        };
        let reloader = Reloader::new(
            loading,
            quotas,
            settling,
            registry.clone(),
            config.max_concurrent_compiles,
        );
        Ok(Self {
            config,
            bounds,
            stats,
            registry,
            reloader: Arc::new(reloader),
        })
    }

    /// Makes `store` the store of every plugin's state, in place of the
    /// in-memory default; deliveries that start afterwards read from it.
    /// The durable bus installs its log here when it starts.
    pub fn set_state_store(&self, store: Arc<dyn plugbus_core::state::StateStore>) {
        self.bounds.state.set(store);
    }

    /// The store of the plugins' state.
    pub fn state_store(&self) -> Arc<dyn plugbus_core::state::StateStore> {
        self.bounds.state.store()
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The compile cache's directory, if the host has a compile cache.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.reloader
            .loading()
            .cache
            .as_ref()
            .map(CompileCache::dir)
    }

    /// The compile cache's counters, if the host has a compile cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.reloader
            .loading()
            .cache
            .as_ref()
            .map(CompileCache::stats)
    }

    /// Loads every plugin under `dir` (`<dir>/<tenant>/<plugin>.wasm`) and
    /// makes them the host's plugins: a plugin whose files are unchanged
    /// since the last load keeps its instances, a changed one is loaded
    /// anew, and one whose files are gone is removed.
    ///
    /// A plugin that cannot be loaded is reported in [`LoadReport::errors`],
    /// naming its file; the others load regardless, and a version of it
    /// loaded before goes on serving. Fails only when `dir` itself cannot be
    /// read, or the compile cache lies inside it.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadReport, HostError> {
        let errors = self.reloader.load_dir(dir)?;
        Ok(LoadReport {
            loaded: self.plugins(),
            errors,
        })
    }

    /// Checks the plugins directory once more, like a notification would,
    /// and waits until every reload it started has finished.
    pub async fn refresh(self: &Arc<Self>, dir: &Path) -> Result<(), HostError> {
        Ok(self.reloader.refresh(dir).await?)
    }

    /// Subscribes to the changes in the host's plugins from now on. A
    /// receiver that falls more than 4,096 changes behind misses the oldest
    /// (see [`broadcast::error::RecvError::Lagged`]).
    pub fn reload_events(&self) -> broadcast::Receiver<ReloadEvent> {
        self.reloader.events()
    }

    /// The state of every plugin the host knows of, loaded or not, by
    /// tenant and name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.reloader.statuses()
    }

    /// The plugins (tenant, name) whose first version is being compiled in
    /// the background ([`HostConfig::background_compile_bytes`]): not
    /// loaded yet, and whose events retention must keep all the same.
    pub fn loading(&self) -> Vec<(String, String)> {
        self.reloader.first_loads()
    }

    /// Watches `dir` and reloads plugins as their files change, until the
    /// returned [`Watcher`] is dropped. Checks the directory once before it
    /// returns, so that nothing changed since [`Host::load_dir`] is missed.
    /// Must be called within a tokio runtime.
    pub fn watch(self: &Arc<Self>, dir: &Path) -> Result<Watcher, HostError> {
        Ok(self.reloader.watch(dir)?)
    }

    /// The loaded plugins, by tenant and name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry
            .load()
            .plugins()
            .map(|p| PluginInfo::of(p))
            .collect()
    }

    /// A loaded plugin, by tenant and name.
    pub fn plugin(&self, tenant: &str, name: &str) -> Option<Arc<Plugin>> {
        self.registry
            .load()
            .plugins()
            .find(|p| p.tenant() == tenant && p.name() == name)
            .cloned()
    }

    /// How many of `tenant`'s loaded plugins subscribe to events of type
    /// `ty`.
    pub fn subscribers(&self, tenant: &str, ty: &str) -> usize {
        self.registry.load().route(tenant, ty).count()
    }

    /// The host's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Publishes an event: delivers it to its tenant's subscribed plugins,
    /// then every event they emitted, level by level, until the chain ends.
    ///
    /// Deliveries run on blocking threads, in parallel across plugins, so a
    /// plugin that spins until its limit delays neither tokio's worker
    /// threads nor other plugins; see [`HostConfig::plugin_concurrency`]. A failed delivery is an outcome in the
    /// report, not an error: `publish` fails only when a delivery task dies.
    pub async fn publish(&self, event: Event) -> Result<PublishReport, PublishError> {
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
        let registry = self.registry.load_full();
        // An event that carries its own (smaller) budget keeps it.
        let budget = Arc::new(AtomicUsize::new(
            event.chain_budget(self.config.max_events_per_chain),
        ));
        let mut report = PublishReport::default();
        let mut level = vec![Arc::new(event)];
        while !level.is_empty() {
            // The level's deliveries report into one place, which wakes
            // this task once, when the last of them is done.
            let replies = Arc::new(Replies::default());
            for event in &level {
                for plugin in registry.route(event.tenant(), event.ty()) {
                    plugin.enqueue(event.clone(), Some(budget.clone()), replies.slot());
                }
            }
            let mut next = Vec::new();
            for reply in replies.all().await {
                let (delivery, emitted) = reply.ok_or_else(|| {
                    PublishError::Internal("a delivery ended without a report".into())
                })?;
                report.deliveries.push(delivery);
                next.extend(emitted.into_iter().map(Arc::new));
            }
            level = next;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, PoisonError};

    use super::*;
    use crate::reload::Health;

    /// A `Write` that keeps what the log subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The `forge-log` mode of the `hostile` fixture writes CR, LF, a line
    /// in the host's format and escape sequences through `log`, stdout and
    /// stderr: every line of the host's log is still one of the host's,
    /// with no raw CR or ESC in it.
    #[test]
    fn plugin_text_cannot_forge_host_log_lines() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tenant = dir.path().join("chaos");
        std::fs::create_dir(&tenant).expect("the tenant's folder");
        std::fs::copy(
            plugbus_artifacts::FIXTURE_HOSTILE,
            tenant.join("forge.wasm"),
        )
        .expect("the fixture");
        std::fs::write(
            tenant.join("forge.toml"),
            "subscribe = [\"hostile.*\"]\n[config]\nmode = \"forge-log\"\n",
        )
        .expect("the manifest");
        let host = Host::new(HostConfig::default()).expect("a host");
        let report = host.load_dir(dir.path()).expect("loaded");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let plugin = host.plugin("chaos", "forge").expect("loaded");
        let event = Event::from_json(
            r#"{"specversion":"1.0","id":"l-1","source":"/t","type":"hostile.forge-log","tenant":"chaos"}"#,
        )
        .expect("an event");

        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let (delivery, _) = tracing::subscriber::with_default(subscriber, || {
            plugin.deliver(&event).expect("deliverable")
        });
        assert!(delivery.outcome.is_handled(), "{delivery:#?}");

        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let log = String::from_utf8(bytes).expect("UTF-8");
        assert!(
            !log.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']),
            "{log:?}"
        );
        // The forged host line, inside five log lines, one line of stdout
        // and two of stderr.
        assert_eq!(
            log.matches("FORGED operator line").count(),
            5 + 1 + 2,
            "{log}"
        );
        for line in log.lines() {
            let level = line.split_whitespace().next().unwrap_or_default();
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "a line the host did not write: {line:?}"
            );
        }
    }

    /// The deliveries of one batch, through `handle-batch`, each log in a
    /// span of their own, under the span that drives the batch, never
    /// inside an earlier delivery's span.
    #[test]
    fn the_deliveries_of_a_batch_log_in_spans_of_their_own() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tenant = dir.path().join("acme");
        std::fs::create_dir(&tenant).expect("the tenant's folder");
        std::fs::copy(plugbus_artifacts::AUDIT_LOG, tenant.join("audit.wasm")).expect("the plugin");
        let host = Host::new(HostConfig::default()).expect("a host");
        let report = host.load_dir(dir.path()).expect("loaded");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let plugin = host.plugin("acme", "audit").expect("loaded");
        assert!(plugin.batching(), "the audit plugin takes batches");
        let ids = ["b-1", "b-2", "b-3", "b-4"];
        let events: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                // One event carries a trace context of its own.
                let trace = if i == 2 {
                    r#","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#
                } else {
                    ""
                };
                Event::from_json(&format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"order.placed","tenant":"acme"{trace}}}"#
                ))
                .expect("an event")
            })
            .collect();

        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let delivered = tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("consumer").in_scope(|| plugin.deliver_batch(&events))
        })
        .expect("deliverable");
        assert!(
            delivered.iter().all(|(d, _)| d.outcome.is_handled()),
            "{delivered:#?}"
        );
        let stats = host.stats();
        assert_eq!(
            (stats.batch_calls, stats.batched_deliveries),
            (1, ids.len() as u64),
            "one call of handle-batch"
        );

        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let log = String::from_utf8(bytes).expect("UTF-8");
        for id in ids {
            let audit = format!("audit tenant=acme type=order.placed id={id} subject=");
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&audit)).collect();
            assert_eq!(lines.len(), 1, "the audit line of {id}:\n{log}");
            // `consumer:delivery{…}: target: message`: the span list ends
            // at the first `: ` after the last span.
            let spans = lines[0]
                .split_once("}: ")
                .map(|(spans, _)| spans)
                .unwrap_or_default();
            assert_eq!(
                spans.matches("delivery{").count(),
                1,
                "{id} logs in its delivery span alone: {}",
                lines[0]
            );
            assert!(
                spans.contains(&format!("event_id={id}")),
                "{id} logs in its own span: {}",
                lines[0]
            );
            assert!(
                spans
                    .trim_start_matches(|c: char| c.is_ascii_uppercase() || c == ' ')
                    .starts_with("consumer:delivery{"),
                "{id}'s span is a child of the span that drives the batch: {}",
                lines[0]
            );
        }
        for line in log.lines().filter(|l| l.contains("delivery{")) {
            assert_eq!(
                line.matches("delivery{").count(),
                1,
                "no delivery span inside another: {line}"
            );
        }
    }

    /// A manifest that fails to load with a multi-line cause (TOML's caret
    /// diagram) is logged on one line, naming the version that goes on
    /// serving; and each return to `active` is logged, naming what the
    /// plugin recovered from: its files put back as they were, a new
    /// version that loads, and a first version that loads after failing.
    #[test]
    fn refusals_log_one_line_and_recoveries_are_logged() {
        const GOOD: &str = "subscribe = [\"order.*\"]\n";
        const BROKEN: &str = "subscribe = [\"order.*\"\n";
        const FIXED: &str = "subscribe = [\"order.*\", \"payment.*\"]\n";
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tenant = dir.path().join("acme");
        std::fs::create_dir(&tenant).expect("the tenant's folder");
        for name in ["audit", "late"] {
            std::fs::copy(
                plugbus_artifacts::AUDIT_LOG,
                tenant.join(format!("{name}.wasm")),
            )
            .expect("the plugin");
        }
        let manifest = |name: &str, text: &str| {
            std::fs::write(tenant.join(format!("{name}.toml")), text).expect("the manifest");
        };
        manifest("audit", GOOD);
        manifest("late", BROKEN);
        let host = Host::new(HostConfig::default()).expect("a host");
        let health = |name: &str| {
            host.statuses()
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| s.health)
        };
        let version = |name: &str| {
            host.plugin("acme", name)
                .map(|p| p.version().to_owned())
                .unwrap_or_default()
        };
        let load = |refused: usize| {
            let report = host.load_dir(dir.path()).expect("the directory loads");
            assert_eq!(report.errors.len(), refused, "{:?}", report.errors);
        };

        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let (first, second) = tracing::subscriber::with_default(subscriber, || {
            load(1);
            assert_eq!(health("late"), Some(Health::FailedToLoad));
            let first = version("audit");
            // Broken, then put back as it was.
            manifest("audit", BROKEN);
            load(1);
            assert_eq!(health("audit"), Some(Health::Degraded));
            manifest("audit", GOOD);
            // Files unchanged since their refusal are not reported again.
            load(0);
            assert_eq!(health("audit"), Some(Health::Active));
            // Broken again, then a new version; and `late` fixed.
            manifest("audit", BROKEN);
            load(1);
            manifest("audit", FIXED);
            manifest("late", GOOD);
            load(0);
            assert_eq!(health("audit"), Some(Health::Active));
            assert_eq!(health("late"), Some(Health::Active));
            (first, version("audit"))
        });
        assert_ne!(first, second);

        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let log = String::from_utf8(bytes).expect("UTF-8");
        for line in log.lines() {
            let level = line.split_whitespace().next().unwrap_or_default();
            assert!(
                ["INFO", "WARN", "ERROR"].contains(&level),
                "a line that continues another: {line:?} in\n{log}"
            );
        }
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("plugin refused"))
            .collect();
        assert_eq!(refused.len(), 3, "{log}");
        assert!(
            refused[0].contains("plugin refused tenant=acme plugin=late error="),
            "{}",
            refused[0]
        );
        for line in &refused[1..] {
            assert!(
                line.contains(&format!(
                    "plugin refused; version {first} goes on serving tenant=acme plugin=audit"
                )),
                "{line}"
            );
        }
        for line in &refused {
            // The cause whole, its diagram's line breaks escaped, and
            // nothing after it.
            assert!(line.contains("invalid manifest"), "{line}");
            assert!(line.contains("\\n"), "{line}");
            assert!(!line.ends_with("\\n"), "{line}");
        }
        let recovered: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("plugin active again"))
            .collect();
        assert_eq!(recovered.len(), 3, "{log}");
        for (line, expected) in recovered.iter().zip([
            format!("tenant=acme plugin=audit version={first} was=degraded recovered_from="),
            format!("tenant=acme plugin=audit version={second} was=degraded recovered_from="),
            format!(
                "tenant=acme plugin=late version={} was=failed_to_load recovered_from=",
                version("late")
            ),
        ]) {
            assert!(line.starts_with(" INFO "), "{line}");
            assert!(line.contains(&expected), "{expected} in {line}");
            assert!(line.contains("invalid manifest"), "{line}");
        }
    }

    /// Every refusal counts once in `plugbus_plugins_refused_total`, by
    /// tenant and reason, however often the directory is loaded again.
    #[test]
    fn refusals_are_counted_once_by_tenant_and_reason() -> Result<(), Box<dyn std::error::Error>> {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("globex/conf"))?;
        std::fs::create_dir_all(root.join("acme"))?;
        std::fs::create_dir_all(root.join("Bad Tenant"))?;
        std::fs::write(
            root.join("globex/conf/p.toml"),
            "[config]\nkey = \"secret\"\n",
        )?;
        std::fs::write(root.join("acme/a.wasm"), b"not wasm")?;
        std::fs::write(root.join("acme/b.wasm"), b"not wasm")?;
        std::os::unix::fs::symlink("../globex/conf/p.toml", root.join("acme/a.toml"))?;
        std::os::unix::fs::symlink("globex", root.join("spy"))?;
        let mut config = HostConfig::default();
        config.tenant_max_plugins.insert("acme".into(), 1);
        let host = Host::new(config)?;
        let errors = metrics::with_local_recorder(&recorder, || -> Result<_, HostError> {
            let first = host.load_dir(root)?.errors.len();
            let again = host.load_dir(root)?.errors.len();
            Ok((first, again))
        })?;
        // The scan's refusals are reported by every load; each plugin's once.
        assert_eq!(errors, (4, 2), "{}", metrics.render());
        let text = metrics.render();
        for (tenant, reason) in [
            ("acme", "outside_tenant"),
            ("acme", "quota"),
            ("-", "tenant_symlink"),
            ("-", "invalid_name"),
        ] {
            let line = format!(
                "plugbus_plugins_refused_total{{tenant=\"{tenant}\",reason=\"{reason}\"}} 1\n"
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert_eq!(
            text.matches("plugbus_plugins_refused_total{").count(),
            4,
            "{text}"
        );
        Ok(())
    }
}
