//! The host: configuration, loading a plugins directory, and publishing
//! events — each routed to its tenant's subscribed plugins, and every event
//! those plugins emit routed the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::cache::{CacheStats, CompileCache};
use crate::dispatch::{Delivery, InstanceMode, Plugin};
use crate::engine::{Allocation, EngineError, EngineOptions};
use crate::event::{Event, EventError};
use crate::loader::{self, LoadContext, LoadError};
use crate::manifest::{Limits, Subscription};
use crate::registry::Registry;
use crate::reload::ReloadState;
use crate::sandbox::{Bounds, PluginState};
use crate::stats::{Stats, StatsSnapshot};

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
            reload_quiet: Duration::from_millis(10),
            reload_write_timeout: Duration::from_secs(1),
            max_batch_events: 128,
            max_batch_bytes: 1024 * 1024,
            max_state_key_bytes: 512,
            max_state_value_bytes: 1024 * 1024,
            max_state_bytes_per_delivery: 4 * 1024 * 1024,
            max_emit_bytes_per_delivery: 4 * 1024 * 1024,
            max_batch_commit_bytes: 16 * 1024 * 1024,
            max_error_bytes: 4096,
            max_limits: Limits::DEFAULT_CEILINGS,
            max_manifest_bytes: 64 * 1024,
            max_plugins_per_tenant: 100,
            tenant_max_plugins: std::collections::BTreeMap::new(),
            recycle_after_events: 100_000,
            recycle_memory_percent: 75,
            recycle_high_water_deliveries: 3,
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
    /// The compile cache lies inside the plugins directory, where tenants
    /// could plant compiled code.
    #[error(
        "the compile cache {} lies inside the plugins directory {}, which tenants write to",
        cache.display(),
        plugins.display()
    )]
    CacheInPluginsDir {
        /// The cache directory.
        cache: PathBuf,
        /// The plugins directory.
        plugins: PathBuf,
    },
    /// The plugins directory cannot be watched.
    #[error("cannot watch the plugins directory {}: {reason}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The WASI and `host` imports could not be registered.
    #[error("cannot set up the plugin linker: {0}")]
    Linker(String),
    /// The plugins directory cannot be read.
    #[error("plugins directory {}: {source}", path.display())]
    PluginsDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
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
    /// The event is invalid; nothing was delivered.
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] EventError),
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
/// use plugbus::{Event, Host, HostConfig};
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
    engine: Engine,
    linker: Linker<PluginState>,
    config: HostConfig,
    bounds: Arc<Bounds>,
    stats: Arc<Stats>,
    pub(crate) registry: ArcSwap<Registry>,
    cache: Option<CompileCache>,
    pub(crate) reload: ReloadState,
}

impl Host {
    /// Builds a host with no plugins, on the process's shared engine for
    /// `config.engine`.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        loader::check_settings(&config)?;
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
            crate::dispatch::linker(&engine).map_err(|e| HostError::Linker(format!("{e:#}")))?;
        let bounds = Arc::new(Bounds {
            state: Arc::new(crate::state::StateSlot::new(Arc::new(
                crate::state::MemoryState::new(),
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
            max_batch_commit_bytes: config.max_batch_commit_bytes,
            max_error_bytes: config.max_error_bytes,
        });
        let cache = match &config.compile_cache {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        let reload = ReloadState::new(config.max_concurrent_compiles);
        Ok(Self {
            engine,
            linker,
            config,
            bounds,
            stats: Arc::new(Stats::default()),
            registry: ArcSwap::from_pointee(Registry::default()),
            cache,
            reload,
        })
    }

    /// Makes `store` the store of every plugin's state, in place of the
    /// in-memory default; deliveries that start afterwards read from it.
    /// The durable bus installs its log here when it starts.
    pub fn set_state_store(&self, store: Arc<dyn crate::state::StateStore>) {
        self.bounds.state.set(store);
    }

    /// The store of the plugins' state.
    pub fn state_store(&self) -> Arc<dyn crate::state::StateStore> {
        self.bounds.state.store()
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// What loading needs from the host.
    pub(crate) fn load_context(&self) -> LoadContext<'_> {
        LoadContext {
            engine: &self.engine,
            linker: &self.linker,
            defaults: self.config.default_limits,
            max_limits: self.config.max_limits,
            max_plugin_bytes: self.config.max_plugin_bytes,
            max_manifest_bytes: self.config.max_manifest_bytes,
            bounds: &self.bounds,
            stats: &self.stats,
            mode: self.config.instance_mode,
            epoch_tick: self.config.engine.epoch_tick,
            fuel_metered: self.config.engine.consume_fuel,
            concurrency: self.config.plugin_concurrency.max(1),
            cache: self.cache.as_ref(),
        }
    }

    /// The compile cache's directory, if the host has a compile cache.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(CompileCache::dir)
    }

    /// The compile cache's counters, if the host has a compile cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(CompileCache::stats)
    }

    /// Refuses a plugin whose memory limit the pooling allocator cannot hold.
    pub(crate) fn check_pool(
        &self,
        candidate: &loader::Candidate,
        limits: &Limits,
    ) -> Result<(), LoadError> {
        if let Allocation::Pooling {
            max_memory_bytes, ..
        } = self.config.engine.allocation
            && limits.memory_bytes > max_memory_bytes
        {
            return Err(LoadError::Manifest {
                path: candidate
                    .manifest
                    .clone()
                    .unwrap_or_else(|| candidate.wasm.clone()),
                reason: crate::manifest::ManifestError::Limit(format!(
                    "limits.memory_mib is larger than this host's largest memory ({} MiB)",
                    max_memory_bytes / (1024 * 1024)
                )),
            });
        }
        Ok(())
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
            let mut replies = Vec::new();
            for event in &level {
                for plugin in registry.route(event.tenant(), event.ty()) {
                    replies.push(plugin.enqueue(event.clone(), Some(budget.clone())));
                }
            }
            let mut next = Vec::new();
            for reply in replies {
                let (delivery, emitted) = reply.await.map_err(|_| {
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
