//! Loading and hot reload: keeping the host's plugins in step with the
//! plugins directory while events flow.
//!
//! Every plugin has a slot that remembers the stamps (size, times, inode)
//! of its files when they were last read and the fingerprint (content hash)
//! of the version that serves. A change is read only once its files have
//! settled, hashed (an unchanged hash is no reload), compiled off the
//! dispatch path with a bounded number of compiles at once, checked against
//! the world `handler`, instantiated once under its limits, and only then
//! swapped into the registry, atomically. A routing decision takes the
//! registry as it is at that moment, so each event is handled wholly by one
//! version; the old version finishes the events it has and is dropped with
//! its instances when the last of them is done. A version that fails any
//! step never replaces the one serving: the failure is logged, counted,
//! reported as a [`ReloadEvent::Failed`] and kept in the plugin's
//! [`PluginStatus`], and the next change of the files is tried again.
//!
//! Each tenant has a quota of loaded plugins
//! ([`HostConfig::max_plugins_per_tenant`](crate::HostConfig::max_plugins_per_tenant)):
//! the plugins that serve (or are being built) keep their places, and the
//! others take the places left in the order of their names; the rest are
//! refused, each once until its files change or a place frees up. So a
//! first load keeps the first plugins by name, and a new plugin never
//! pushes out one that serves.
//!
//! Every refusal is counted in `plugbus_plugins_refused_total{tenant,
//! reason}`, `reason` one of [`loader::REFUSAL_REASONS`]; `tenant` is `-`
//! for what lies outside any tenant's folder (a file in the plugins
//! directory itself, a folder whose name is not a tenant name, a tenant
//! folder that is a symbolic link).
//!
//! A [`Reloader`] does all of this for the [`Host`](crate::Host), which
//! holds one; [`Host::watch`](crate::Host::watch) drives it from
//! file-system notifications.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::time::Instant;

use arc_swap::ArcSwap;

use crate::cache::{CompileCache, CompileSource};
use crate::dispatch::Plugin;
use crate::loader::{self, Candidate, Compiled, LoadContext, LoadError, PluginQuotas, Stamps};
use crate::registry::Registry;

/// How often the watcher rescans the whole directory even without a
/// notification, in case the kernel dropped some.
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// A change in the host's plugins, as
/// [`Host::reload_events`](crate::Host::reload_events) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReloadEvent {
    /// A plugin that was not loaded now is.
    Loaded {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
        /// Whether it was compiled or came from the compile cache.
        compile: CompileSource,
    },
    /// A new version of a plugin replaced the one serving.
    Replaced {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
        /// The version replaced, which finishes the events it has.
        previous: String,
        /// The version now serving.
        version: String,
        /// Whether it was compiled or came from the compile cache.
        compile: CompileSource,
    },
    /// A new version of a plugin could not be loaded; the version serving,
    /// if any, goes on serving.
    Failed {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
        /// The file at fault.
        path: PathBuf,
        /// Why, naming the file.
        reason: String,
        /// The version still serving, if any.
        serving: Option<String>,
    },
    /// A plugin's files were removed: it takes no new events, finishes
    /// those it has, and is dropped.
    Removed {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
        /// The version removed.
        version: String,
    },
}

impl ReloadEvent {
    /// The tenant the change is about.
    pub fn tenant(&self) -> &str {
        match self {
            Self::Loaded { tenant, .. }
            | Self::Replaced { tenant, .. }
            | Self::Failed { tenant, .. }
            | Self::Removed { tenant, .. } => tenant,
        }
    }

    /// The plugin the change is about.
    pub fn plugin(&self) -> &str {
        match self {
            Self::Loaded { plugin, .. }
            | Self::Replaced { plugin, .. }
            | Self::Failed { plugin, .. }
            | Self::Removed { plugin, .. } => plugin,
        }
    }
}

/// Whether a plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Its newest files are loaded and serve.
    Active,
    /// A version serves, but its newest files failed to load.
    Degraded,
    /// No version serves: its files failed to load.
    FailedToLoad,
}

impl Health {
    /// Its name, as the admin API and the logs spell it: `active`,
    /// `degraded` or `failed_to_load`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::FailedToLoad => "failed_to_load",
        }
    }
}

/// A plugin's state, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub name: String,
    /// Its component file.
    pub path: PathBuf,
    /// The version serving, if any.
    pub version: Option<String>,
    /// Whether it serves.
    pub health: Health,
    /// Why its newest files failed to load, if they did.
    pub last_error: Option<String>,
    /// How many times a new version replaced the one serving.
    pub reloads: u64,
    /// How many times a new version failed to load.
    pub failed_reloads: u64,
    /// Its quarantine, when its deliveries kept failing; only a
    /// durable bus (`plugbus_bus`) quarantines, so
    /// [`Host::statuses`](crate::Host::statuses) says `None`.
    pub quarantine: Option<plugbus_core::outcome::Quarantine>,
}

type Key = (String, String);

/// What the host remembers of one plugin's files.
#[derive(Debug, Default)]
struct Slot {
    path: PathBuf,
    /// The files' stamps when last read; `None` to read them again.
    stamps: Option<Stamps>,
    /// The fingerprint and version serving.
    serving: Option<([u8; 32], String)>,
    /// The fingerprint of files that failed to load, so that the same
    /// content is not tried (and reported) again.
    failed: Option<[u8; 32]>,
    error: Option<String>,
    reloads: u64,
    failed_reloads: u64,
    /// A reload of this plugin is under way, and whether another change
    /// arrived meanwhile.
    building: bool,
    again: bool,
    /// It was refused for its tenant's quota of plugins (and is read again
    /// once it fits).
    over_quota: bool,
}

/// Why a plugins directory could not be loaded, refreshed or watched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
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
    /// The plugins directory cannot be read.
    #[error("plugins directory {}: {source}", path.display())]
    PluginsDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How long a changed file must stay quiet before it is read: part of the
/// host's configuration
/// ([`HostConfig::reload_quiet`](crate::HostConfig::reload_quiet) and
/// [`HostConfig::reload_write_timeout`](crate::HostConfig::reload_write_timeout)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settling {
    /// After its last change.
    pub quiet: Duration,
    /// After its last change, while a writer still has it open.
    pub write_timeout: Duration,
}

/// Keeps the host's plugins in step with their files: remembers each
/// plugin's files in its slot, builds new versions off the dispatch path,
/// and swaps them into the registry it shares with the host.
pub(crate) struct Reloader {
    /// What building a plugin takes.
    loading: LoadContext,
    quotas: PluginQuotas,
    settling: Settling,
    /// The registry the host routes with; only the reloader stores into it.
    registry: Arc<ArcSwap<Registry>>,
    slots: Mutex<BTreeMap<Key, Slot>>,
    /// Serialises registry swaps, which each start from the registry the
    /// previous swap stored.
    swap: Mutex<()>,
    events: broadcast::Sender<ReloadEvent>,
    compiles: Arc<Semaphore>,
    /// Refusals found by the last scan, to log each once, not per scan.
    scan_errors: Mutex<BTreeSet<String>>,
}

/// The result of reading and building one plugin.
enum BuildResult {
    /// The files hash to the version serving (`serving`), or to the one
    /// that failed last.
    Unchanged { stamps: Stamps, serving: bool },
    /// A new version, ready to serve.
    Built {
        plugin: Arc<Plugin>,
        fingerprint: [u8; 32],
        stamps: Stamps,
        compile: CompileSource,
    },
    /// Left to a compile in the background: a first load met a large
    /// component that must be compiled
    /// ([`LoadContext::background_compile_bytes`]).
    Background { stamps: Stamps, bytes: usize },
    /// The files could not be loaded.
    Failed {
        error: LoadError,
        fingerprint: Option<[u8; 32]>,
        stamps: Option<Stamps>,
    },
}

/// Registry changes and their events, applied together.
#[derive(Default)]
struct RegistryChanges {
    /// Plugins to put in (or, `None`, to take out), by tenant and name.
    plugins: Vec<(Key, Option<Arc<Plugin>>)>,
    events: Vec<ReloadEvent>,
}

fn key_of(candidate: &Candidate) -> Key {
    (candidate.tenant.clone(), candidate.name.clone())
}

impl Reloader {
    /// A reloader that builds plugins with `loading`, within `quotas`,
    /// and stores them into `registry`, compiling at most
    /// `max_concurrent_compiles` at once.
    pub fn new(
        loading: LoadContext,
        quotas: PluginQuotas,
        settling: Settling,
        registry: Arc<ArcSwap<Registry>>,
        max_concurrent_compiles: usize,
    ) -> Self {
        Self {
            loading,
            quotas,
            settling,
            registry,
            slots: Mutex::default(),
            swap: Mutex::default(),
            events: broadcast::channel(4096).0,
            compiles: Arc::new(Semaphore::new(max_concurrent_compiles.max(1))),
            scan_errors: Mutex::default(),
        }
    }

    /// What building a plugin takes.
    pub fn loading(&self) -> &LoadContext {
        &self.loading
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads every plugin under `dir` (`<dir>/<tenant>/<plugin>.wasm`) and
    /// makes them the registry's plugins: a plugin whose files are
    /// unchanged since the last load keeps its instances, a changed one is
    /// loaded anew, and one whose files are gone is removed.
    ///
    /// Within a tokio runtime, a component larger than
    /// [`LoadContext::background_compile_bytes`] that must be compiled (it
    /// is not in the compile cache) is left to a compile in the background,
    /// as a hot reload is: this returns without it, and it serves (with a
    /// [`ReloadEvent::Loaded`] or [`ReloadEvent::Replaced`]) once compiled,
    /// so that the first start of a host with a new 10-40 MB component
    /// does not wait for its compile to deliver to the other plugins.
    ///
    /// Returns the refusals, each naming its file; the other plugins load
    /// regardless, and a version of a refused one loaded before goes on
    /// serving. Fails only when `dir` itself cannot be read, or the compile
    /// cache lies inside it.
    pub fn load_dir(self: &Arc<Self>, dir: &Path) -> Result<Vec<LoadError>, ReloadError> {
        let root = self.plugins_root(dir)?;
        let (candidates, mut errors) =
            loader::scan(&root).map_err(|source| ReloadError::PluginsDir {
                path: dir.to_owned(),
                source,
            })?;
        // The caller reports them; they are only counted here.
        self.note_scan_errors(&root, &errors, false);
        let mut changes = RegistryChanges::default();
        self.remove_missing(&candidates, &HashSet::new(), &mut changes);
        let (candidates, over_quota) = self.admit(candidates);
        errors.extend(self.refuse_over_quota(over_quota, &mut changes));
        let mut compiled = Compiled::new();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut background = Vec::new();
        for candidate in &candidates {
            let stamps = loader::stamps(candidate);
            {
                let mut slots = self.slots();
                let slot = slots.entry(key_of(candidate)).or_default();
                if slot.building || slot.stamps == Some(stamps) {
                    continue;
                }
            }
            let result = self.build(candidate, &mut compiled, runtime.is_some());
            if let BuildResult::Background { stamps, bytes } = result {
                let mut slots = self.slots();
                let slot = slots.entry(key_of(candidate)).or_default();
                slot.path = candidate.wasm.clone();
                slot.stamps = Some(stamps);
                slot.building = true;
                tracing::info!(
                    tenant = %candidate.tenant,
                    plugin = %candidate.name,
                    bytes,
                    "compiling in the background (a large component not in the compile cache); it serves once compiled"
                );
                background.push(candidate.clone());
                continue;
            }
            if let Some(error) = self.apply(candidate, result, &mut changes) {
                errors.push(error);
            }
        }
        self.commit(changes);
        if let Some(runtime) = runtime {
            for candidate in background {
                runtime.spawn(self.clone().rebuild(candidate));
            }
        }
        Ok(errors)
    }

    /// The plugins whose first version is being built: not loaded yet,
    /// and not refused.
    pub fn first_loads(&self) -> Vec<(String, String)> {
        self.slots()
            .iter()
            .filter(|(_, slot)| slot.building && slot.serving.is_none())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Checks the plugins directory once more, like a notification would,
    /// and waits until every reload it started has finished.
    pub async fn refresh(self: &Arc<Self>, dir: &Path) -> Result<(), ReloadError> {
        let root = self.plugins_root(dir)?;
        for task in self.start_refresh(&root, &HashSet::new())? {
            if let Err(e) = task.await {
                tracing::error!("a reload task failed: {e}");
            }
        }
        Ok(())
    }

    /// Subscribes to the changes in the host's plugins from now on. A
    /// receiver that falls more than 4,096 changes behind misses the oldest
    /// (see [`broadcast::error::RecvError::Lagged`]).
    pub fn events(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// The state of every plugin the host knows of, loaded or not, by
    /// tenant and name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.slots()
            .iter()
            // A plugin whose first version is being built is not known yet.
            .filter(|(_, slot)| !(slot.building && slot.serving.is_none() && slot.error.is_none()))
            .map(|((tenant, name), slot)| PluginStatus {
                tenant: tenant.clone(),
                name: name.clone(),
                path: slot.path.clone(),
                version: slot.serving.as_ref().map(|(_, v)| v.clone()),
                health: match (&slot.serving, &slot.error) {
                    (Some(_), None) => Health::Active,
                    (Some(_), Some(_)) => Health::Degraded,
                    (None, _) => Health::FailedToLoad,
                },
                last_error: slot.error.clone(),
                reloads: slot.reloads,
                failed_reloads: slot.failed_reloads,
                quarantine: None,
            })
            .collect()
    }

    /// Watches `dir` and reloads plugins as their files change, until the
    /// returned [`Watcher`] is dropped. Checks the directory once before it
    /// returns, so that nothing changed since the last
    /// [`Reloader::load_dir`] is missed. Must be called within a tokio
    /// runtime.
    pub fn watch(self: &Arc<Self>, dir: &Path) -> Result<Watcher, ReloadError> {
        use notify::Watcher as _;
        let root = self.plugins_root(dir)?;
        let watch_error = |e: notify::Error| ReloadError::Watch {
            path: dir.to_owned(),
            reason: e.to_string(),
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The loop may have ended; then nobody needs the event.
            let _ = sender.send(event);
        })
        .map_err(watch_error)?;
        watcher
            .watch(&root, notify::RecursiveMode::Recursive)
            .map_err(watch_error)?;
        // What changed since the last load is picked up now, before the
        // caller goes on to change files itself; from here on, the
        // notifications tell when files have settled.
        self.start_refresh(&root, &HashSet::new())?;
        let task = tokio::spawn(watch_loop(self.clone(), root, receiver));
        Ok(Watcher {
            task,
            _watcher: watcher,
        })
    }

    /// `dir`, canonical, after checking that the compile cache is not in it.
    fn plugins_root(&self, dir: &Path) -> Result<PathBuf, ReloadError> {
        let root = dir
            .canonicalize()
            .map_err(|source| ReloadError::PluginsDir {
                path: dir.to_owned(),
                source,
            })?;
        if let Some(cache) = self.loading.cache.as_ref().map(CompileCache::dir)
            && cache.starts_with(&root)
        {
            return Err(ReloadError::CacheInPluginsDir {
                cache: cache.to_owned(),
                plugins: root,
            });
        }
        Ok(root)
    }

    /// Scans the directory, removes the plugins whose files are gone, and
    /// starts a reload of each plugin whose files changed and settled.
    fn start_refresh(
        self: &Arc<Self>,
        root: &Path,
        settling: &HashSet<PathBuf>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ReloadError> {
        let (candidates, errors) =
            loader::scan(root).map_err(|source| ReloadError::PluginsDir {
                path: root.to_owned(),
                source,
            })?;
        self.note_scan_errors(root, &errors, true);
        let mut changes = RegistryChanges::default();
        self.remove_missing(&candidates, settling, &mut changes);
        let (candidates, over_quota) = self.admit(candidates);
        self.refuse_over_quota(over_quota, &mut changes);
        self.commit(changes);
        let mut tasks = Vec::new();
        for candidate in candidates {
            let unsettled = settling.contains(&candidate.wasm)
                || candidate
                    .manifest
                    .as_ref()
                    .is_some_and(|m| settling.contains(m));
            if unsettled {
                continue;
            }
            let stamps = loader::stamps(&candidate);
            {
                let mut slots = self.slots();
                let slot = slots.entry(key_of(&candidate)).or_default();
                if slot.stamps == Some(stamps) {
                    continue;
                }
                if slot.building {
                    slot.again = true;
                    continue;
                }
                slot.building = true;
            }
            tasks.push(tokio::spawn(self.clone().rebuild(candidate)));
        }
        Ok(tasks)
    }

    /// Reloads one plugin, again and again while changes keep arriving.
    async fn rebuild(self: Arc<Self>, candidate: Candidate) {
        loop {
            let Ok(permit) = self.compiles.clone().acquire_owned().await else {
                return; // The semaphore is never closed.
            };
            let reloader = self.clone();
            let job = candidate.clone();
            let built = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                reloader.build(&job, &mut Compiled::new(), false)
            })
            .await;
            match built {
                Ok(result) => {
                    let mut changes = RegistryChanges::default();
                    self.apply(&candidate, result, &mut changes);
                    self.commit(changes);
                }
                Err(e) => tracing::error!(
                    file = %candidate.wasm.display(),
                    "reloading failed inside the host: {e}"
                ),
            }
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&key_of(&candidate)) else {
                return;
            };
            if slot.again {
                slot.again = false;
            } else {
                slot.building = false;
                return;
            }
        }
    }

    /// Reads and builds one plugin, or, if `background` allows, leaves a
    /// long compile to the background ([`BuildResult::Background`]).
    /// Blocking: compiles.
    fn build(
        &self,
        candidate: &Candidate,
        compiled: &mut Compiled,
        background: bool,
    ) -> BuildResult {
        let ctx = &self.loading;
        let source = match loader::read(ctx, candidate) {
            Ok(source) => source,
            Err(error) => {
                let stamps = match error {
                    LoadError::Changing { .. } => None,
                    _ => Some(loader::stamps(candidate)),
                };
                return BuildResult::Failed {
                    error,
                    fingerprint: None,
                    stamps,
                };
            }
        };
        let fingerprint = source.fingerprint;
        let stamps = source.stamps;
        {
            let slots = self.slots();
            if let Some(slot) = slots.get(&key_of(candidate)) {
                let serving = slot
                    .serving
                    .as_ref()
                    .is_some_and(|(f, _)| *f == fingerprint);
                if serving || slot.failed == Some(fingerprint) {
                    return BuildResult::Unchanged { stamps, serving };
                }
            }
        }
        let failed = |error| BuildResult::Failed {
            error,
            fingerprint: Some(fingerprint),
            stamps: Some(stamps),
        };
        if let Err(error) = loader::check_ceilings(ctx, candidate, source.manifest()) {
            return failed(error);
        }
        if let Err(error) = loader::check_pool(ctx, candidate, &source.manifest().limits) {
            return failed(error);
        }
        if background && loader::compiles_long(ctx, compiled, &source) {
            return BuildResult::Background {
                stamps,
                bytes: source.len(),
            };
        }
        match loader::build(ctx, compiled, candidate, source) {
            Ok((plugin, compile)) => BuildResult::Built {
                plugin: Arc::new(plugin),
                fingerprint,
                stamps,
                compile,
            },
            Err(error) => failed(error),
        }
    }

    /// Records a build's result in the plugin's slot and adds its registry
    /// change and event to `changes`; returns the error of a failed build.
    fn apply(
        &self,
        candidate: &Candidate,
        result: BuildResult,
        changes: &mut RegistryChanges,
    ) -> Option<LoadError> {
        let key = key_of(candidate);
        let mut slots = self.slots();
        let slot = slots.entry(key.clone()).or_default();
        slot.path = candidate.wasm.clone();
        match result {
            // Marked by `load_dir`, which starts its compile.
            BuildResult::Background { .. } => None,
            BuildResult::Unchanged { stamps, serving } => {
                slot.stamps = Some(stamps);
                if serving {
                    // The files are back to the version serving: whatever
                    // failed in between is no longer there.
                    slot.failed = None;
                    if let (Some(error), Some((_, version))) = (slot.error.take(), &slot.serving) {
                        self.log_recovery(&key, version, Health::Degraded, &error);
                    }
                }
                None
            }
            BuildResult::Built {
                plugin,
                fingerprint,
                stamps,
                compile,
            } => {
                if !candidate.wasm.exists() {
                    // Removed while it was compiled: the next scan removes it.
                    slot.stamps = None;
                    return None;
                }
                let (tenant, name) = key.clone();
                let version = plugin.version().to_owned();
                // What it recovers from, if its newest files had failed.
                let was = match &slot.serving {
                    Some(_) => Health::Degraded,
                    None => Health::FailedToLoad,
                };
                let recovered = slot.error.take().map(|error| (was, error));
                let event = match slot.serving.replace((fingerprint, version.clone())) {
                    Some((_, previous)) => {
                        slot.reloads += 1;
                        tracing::info!(
                            tenant = %tenant, plugin = %name, %previous, %version, ?compile,
                            "plugin replaced"
                        );
                        ReloadEvent::Replaced {
                            tenant,
                            plugin: name,
                            previous,
                            version,
                            compile,
                        }
                    }
                    None => {
                        tracing::info!(tenant = %tenant, plugin = %name, %version, ?compile, "plugin loaded");
                        ReloadEvent::Loaded {
                            tenant,
                            plugin: name,
                            version,
                            compile,
                        }
                    }
                };
                if let Some((was, error)) = recovered {
                    self.log_recovery(&key, plugin.version(), was, &error);
                }
                slot.stamps = Some(stamps);
                slot.failed = None;
                slot.error = None;
                changes.plugins.push((key, Some(plugin)));
                changes.events.push(event);
                None
            }
            BuildResult::Failed {
                error,
                fingerprint,
                stamps,
            } => {
                slot.stamps = stamps;
                if matches!(error, LoadError::Changing { .. }) {
                    tracing::debug!("{}", self.one_line(&error.to_string()));
                    return Some(error);
                }
                count_refusal(&key.0, &error);
                let serving = slot.serving.as_ref().map(|(_, v)| v.clone());
                // One line, whatever the cause: a manifest's syntax error
                // spans several (its caret diagram), and it quotes the
                // tenant's file. The cause stays whole in the returned
                // error and in the plugin's status.
                let cause = self.one_line(&error.to_string());
                let (tenant, plugin) = (&key.0, &key.1);
                match &serving {
                    Some(version) => tracing::error!(
                        %tenant, %plugin, error = %cause,
                        "plugin refused; version {version} goes on serving"
                    ),
                    None => tracing::error!(%tenant, %plugin, error = %cause, "plugin refused"),
                }
                slot.failed = fingerprint;
                slot.error = Some(error.to_string());
                slot.failed_reloads += 1;
                changes.events.push(ReloadEvent::Failed {
                    tenant: key.0,
                    plugin: key.1,
                    path: error.path().to_owned(),
                    reason: error.to_string(),
                    serving,
                });
                Some(error)
            }
        }
    }

    /// `text` (a load error's message) as one line of the host's log:
    /// without its trailing line break, every control character escaped,
    /// cut at the host's limit of error messages.
    fn one_line(&self, text: &str) -> String {
        plugbus_core::text::escape(text.trim_end(), self.loading.bounds.max_error_bytes)
            .into_owned()
    }

    /// Logs that the plugin `key` is active again, serving `version` from
    /// its newest files, after it `was` degraded or failed to load with
    /// `error`.
    fn log_recovery(&self, key: &Key, version: &str, was: Health, error: &str) {
        let (tenant, plugin) = key;
        tracing::info!(
            %tenant,
            %plugin,
            %version,
            was = %was.as_str(),
            recovered_from = %self.one_line(error),
            "plugin active again"
        );
    }

    /// Removes the plugins that are no longer among `candidates` (and whose
    /// files are not merely being rewritten).
    fn remove_missing(
        &self,
        candidates: &[Candidate],
        settling: &HashSet<PathBuf>,
        changes: &mut RegistryChanges,
    ) {
        let present: HashSet<Key> = candidates.iter().map(key_of).collect();
        let mut slots = self.slots();
        let gone: Vec<Key> = slots
            .iter()
            .filter(|(key, slot)| {
                !present.contains(*key) && !slot.building && !settling.contains(&slot.path)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let Some(slot) = slots.remove(&key) else {
                continue;
            };
            if let Some((_, version)) = slot.serving {
                tracing::info!(tenant = %key.0, plugin = %key.1, %version, "plugin removed");
                changes.events.push(ReloadEvent::Removed {
                    tenant: key.0.clone(),
                    plugin: key.1.clone(),
                    version,
                });
                changes.plugins.push((key, None));
            }
        }
    }

    /// Swaps in a registry with `changes`, then announces them.
    fn commit(&self, changes: RegistryChanges) {
        if !changes.plugins.is_empty() {
            let _swap = self.swap.lock().unwrap_or_else(PoisonError::into_inner);
            let current = self.registry.load_full();
            let mut plugins: HashMap<(&str, &str), Arc<Plugin>> = current
                .plugins()
                .map(|p| ((p.tenant(), p.name()), p.clone()))
                .collect();
            for ((tenant, name), plugin) in &changes.plugins {
                match plugin {
                    Some(plugin) => plugins.insert((tenant, name), plugin.clone()),
                    None => plugins.remove(&(tenant.as_str(), name.as_str())),
                };
            }
            self.registry
                .store(Arc::new(Registry::new(plugins.into_values())));
        }
        for event in changes.events {
            // Nobody may be listening; the change happened anyway.
            let _ = self.events.send(event);
        }
    }

    /// Counts, and logs if `log`, the scan's refusals that the previous
    /// scan did not have.
    fn note_scan_errors(&self, root: &Path, errors: &[LoadError], log: bool) {
        let now: BTreeMap<String, &LoadError> = errors.iter().map(|e| (e.to_string(), e)).collect();
        let mut before = self
            .scan_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (message, error) in &now {
            if before.contains(message) {
                continue;
            }
            if log {
                // A file's name is the tenant's text.
                tracing::error!("refused: {}", self.one_line(message));
            }
            count_refusal(&tenant_label(root, error.path()), error);
        }
        *before = now.into_keys().collect();
    }

    /// Splits `candidates` by their tenants' quotas of plugins: the plugins
    /// within them, and those past them.
    fn admit(&self, candidates: Vec<Candidate>) -> (Vec<Candidate>, Vec<Candidate>) {
        let mut slots = self.slots();
        let (admitted, refused) = loader::split_by_quota(
            candidates,
            |c| {
                slots
                    .get(&key_of(c))
                    .is_some_and(|s| s.serving.is_some() || s.building)
            },
            |tenant| self.quotas.of(tenant).0,
        );
        for candidate in &admitted {
            if let Some(slot) = slots.get_mut(&key_of(candidate))
                && slot.over_quota
            {
                // It fits now: read it again, though its files are the same.
                slot.over_quota = false;
                slot.stamps = None;
            }
        }
        (admitted, refused)
    }

    /// Refuses the plugins past their tenants' quotas, each once until its
    /// files change; returns the refusals made now.
    fn refuse_over_quota(
        &self,
        refused: Vec<Candidate>,
        changes: &mut RegistryChanges,
    ) -> Vec<LoadError> {
        let mut errors = Vec::new();
        for candidate in refused {
            let stamps = loader::stamps(&candidate);
            let reported = self
                .slots()
                .get(&key_of(&candidate))
                .is_some_and(|s| s.over_quota && s.stamps == Some(stamps));
            if reported {
                continue;
            }
            let (quota, setting) = self.quotas.of(&candidate.tenant);
            let error = LoadError::Quota {
                path: candidate.wasm.clone(),
                tenant: candidate.tenant.clone(),
                quota,
                setting,
            };
            let result = BuildResult::Failed {
                error,
                fingerprint: None,
                stamps: Some(stamps),
            };
            errors.extend(self.apply(&candidate, result, changes));
            if let Some(slot) = self.slots().get_mut(&key_of(&candidate)) {
                slot.over_quota = true;
            }
        }
        errors
    }
}

/// Counts a refusal in `plugbus_plugins_refused_total{tenant, reason}`.
fn count_refusal(tenant: &str, error: &LoadError) {
    if let Some(reason) = error.reason() {
        metrics::counter!(
            "plugbus_plugins_refused_total",
            "tenant" => tenant.to_owned(),
            "reason" => reason,
        )
        .increment(1);
    }
}

/// The `tenant` label of a refusal of `path`, found by a scan of `root`:
/// the tenant whose folder it lies in, or `-` for what lies outside any
/// (only tenant folders with valid names are scanned, so the label is
/// always a valid tenant name or `-`).
fn tenant_label(root: &Path, path: &Path) -> String {
    let mut parts = path
        .strip_prefix(root)
        .into_iter()
        .flat_map(Path::components);
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(tenant)), Some(_)) => {
            let tenant = tenant.to_string_lossy();
            match plugbus_core::manifest::validate_name(&tenant) {
                Ok(()) => tenant.into_owned(),
                Err(_) => "-".to_owned(),
            }
        }
        _ => "-".to_owned(),
    }
}

/// Watches a plugins directory for [`Host::watch`](crate::Host::watch); dropping it stops the
/// watching (reloads already under way finish).
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// A changed path: when it last changed, and whether a writer may still be
/// at work on it (it was created or written and not yet closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    last: Instant,
    writing: bool,
}

/// The debounce between file-system notifications and reloads: the
/// changed paths not yet settled. A path settles once it has been quiet
/// for [`Settling::quiet`], or for [`Settling::write_timeout`] while a
/// writer still has it open. Pure logic: it is told the time.
#[derive(Debug)]
struct Debounce {
    settling: Settling,
    changes: HashMap<PathBuf, Change>,
}

impl Debounce {
    fn new(settling: Settling) -> Self {
        Self {
            settling,
            changes: HashMap::new(),
        }
    }

    /// Records the paths of a notification received at `now` that matter
    /// under `root`: components, manifests, and tenant directories.
    fn note(&mut self, root: &Path, event: &notify::Event, now: Instant) {
        let Some(writing) = writing(&event.kind) else {
            return;
        };
        for path in &event.paths {
            let relevant = path.parent() == Some(root)
                || path.extension().is_some_and(|e| e == "wasm" || e == "toml");
            if relevant {
                self.changes
                    .insert(path.clone(), Change { last: now, writing });
            }
        }
    }

    /// When `change` settles.
    fn deadline(&self, change: &Change) -> Instant {
        let wait = if change.writing {
            self.settling.write_timeout
        } else {
            self.settling.quiet
        };
        change.last + wait
    }

    /// Takes the paths that have settled by `now`.
    fn settled(&mut self, now: Instant) -> Vec<PathBuf> {
        let settled: Vec<PathBuf> = self
            .changes
            .iter()
            .filter(|(_, change)| self.deadline(change) <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in &settled {
            self.changes.remove(path);
        }
        settled
    }

    /// The paths still settling, which a refresh leaves out.
    fn unsettled(&self) -> HashSet<PathBuf> {
        self.changes.keys().cloned().collect()
    }

    /// When the next path settles, if any is settling.
    fn next_deadline(&self) -> Option<Instant> {
        self.changes
            .values()
            .map(|change| self.deadline(change))
            .min()
    }
}

/// Whether a notification of `kind` says that a writer may still be at
/// work on its paths (they were created or written, and not yet closed);
/// `None` when it does not bear on their content (a read, an open).
fn writing(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Create(CreateKind::File | CreateKind::Any)
        | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Some(true),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
        EventKind::Access(_) => None,
        _ => Some(false),
    }
}

/// Turns notifications into refreshes through a [`Debounce`]: a refresh
/// starts when paths have settled (and leaves out those still settling),
/// when the watcher asks for a rescan, and every [`RESCAN_INTERVAL`].
async fn watch_loop(
    reloader: Arc<Reloader>,
    root: PathBuf,
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
) {
    let mut debounce = Debounce::new(reloader.settling);
    let mut rescan = false;
    let mut tick = tokio::time::interval_at(Instant::now() + RESCAN_INTERVAL, RESCAN_INTERVAL);
    loop {
        let now = Instant::now();
        let settled = debounce.settled(now);
        if rescan || !settled.is_empty() {
            if let Err(e) = reloader.start_refresh(&root, &debounce.unsettled()) {
                tracing::error!("cannot reload: {e}");
            }
            rescan = false;
        }
        let next = debounce.next_deadline();
        tokio::select! {
            event = events.recv() => match event {
                None => return,
                Some(Ok(event)) => {
                    rescan |= event.need_rescan();
                    debounce.note(&root, &event, Instant::now());
                }
                Some(Err(e)) => {
                    tracing::warn!("watching {}: {e}; rescanning", root.display());
                    rescan = true;
                }
            },
            () = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
            _ = tick.tick() => rescan = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_are_those_of_the_api() {
        for health in [Health::Active, Health::Degraded, Health::FailedToLoad] {
            assert_eq!(
                serde_json::to_value(health).ok(),
                Some(serde_json::Value::from(health.as_str()))
            );
        }
    }

    #[test]
    fn tenant_labels_are_tenant_names_or_a_dash() {
        let root = Path::new("/plugins");
        let label = |path: &str| tenant_label(root, Path::new(path));
        assert_eq!(label("/plugins/acme/p.wasm"), "acme");
        assert_eq!(label("/plugins/acme"), "-");
        assert_eq!(label("/plugins/stray.wasm"), "-");
        assert_eq!(label("/plugins/Bad Tenant/p.wasm"), "-");
        assert_eq!(label("/elsewhere/acme/p.wasm"), "-");
    }

    const SETTLING: Settling = Settling {
        quiet: Duration::from_millis(10),
        write_timeout: Duration::from_secs(1),
    };

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    }

    fn written() -> EventKind {
        EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Content))
    }

    fn closed() -> EventKind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    }

    fn renamed() -> EventKind {
        EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To))
    }

    #[test]
    fn a_renamed_file_settles_after_the_quiet_time() {
        let root = Path::new("/plugins");
        let t0 = Instant::now();
        let mut debounce = Debounce::new(SETTLING);
        debounce.note(root, &event(renamed(), &["/plugins/acme/p.wasm"]), t0);
        assert_eq!(debounce.next_deadline(), Some(t0 + SETTLING.quiet));
        assert!(debounce.settled(t0 + Duration::from_millis(9)).is_empty());
        assert_eq!(
            debounce.unsettled(),
            HashSet::from([PathBuf::from("/plugins/acme/p.wasm")])
        );
        assert_eq!(
            debounce.settled(t0 + SETTLING.quiet),
            [PathBuf::from("/plugins/acme/p.wasm")]
        );
        assert!(debounce.unsettled().is_empty());
        assert_eq!(debounce.next_deadline(), None);
        assert!(debounce.settled(t0 + SETTLING.write_timeout).is_empty());
    }

    #[test]
    fn a_file_being_written_waits_for_its_close_or_the_write_timeout() {
        let root = Path::new("/plugins");
        let path = "/plugins/acme/p.wasm";
        let t0 = Instant::now();
        let mut debounce = Debounce::new(SETTLING);
        debounce.note(root, &event(written(), &[path]), t0);
        // Quiet, but a writer has it open.
        assert!(debounce.settled(t0 + SETTLING.quiet).is_empty());
        assert_eq!(debounce.next_deadline(), Some(t0 + SETTLING.write_timeout));
        // Another write starts the wait again.
        let t1 = t0 + Duration::from_millis(500);
        debounce.note(root, &event(written(), &[path]), t1);
        assert!(debounce.settled(t0 + SETTLING.write_timeout).is_empty());
        assert_eq!(
            debounce.settled(t1 + SETTLING.write_timeout),
            [PathBuf::from(path)]
        );
        // A close ends the writing: quiet time only.
        debounce.note(root, &event(written(), &[path]), t1);
        let t2 = t1 + Duration::from_millis(1);
        debounce.note(root, &event(closed(), &[path]), t2);
        assert_eq!(debounce.next_deadline(), Some(t2 + SETTLING.quiet));
        assert_eq!(debounce.settled(t2 + SETTLING.quiet), [PathBuf::from(path)]);
    }

    #[test]
    fn only_components_manifests_and_tenant_folders_are_noted() {
        let root = Path::new("/plugins");
        let t0 = Instant::now();
        let mut debounce = Debounce::new(SETTLING);
        let paths = [
            "/plugins/acme/p.wasm",
            "/plugins/acme/p.toml",
            "/plugins/acme",
            "/plugins/acme/notes.txt",
            "/plugins/acme/.p.wasm.swp",
        ];
        debounce.note(root, &event(renamed(), &paths), t0);
        let mut noted: Vec<_> = debounce.unsettled().into_iter().collect();
        noted.sort();
        assert_eq!(
            noted,
            [
                "/plugins/acme",
                "/plugins/acme/p.toml",
                "/plugins/acme/p.wasm"
            ]
            .map(PathBuf::from)
        );
        // Reads and opens say nothing about content.
        let mut debounce = Debounce::new(SETTLING);
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        debounce.note(root, &event(opened, &["/plugins/acme/p.wasm"]), t0);
        assert!(debounce.unsettled().is_empty());
    }

    #[test]
    fn paths_settle_each_on_its_own_time() {
        let root = Path::new("/plugins");
        let t0 = Instant::now();
        let mut debounce = Debounce::new(SETTLING);
        debounce.note(root, &event(written(), &["/plugins/acme/a.wasm"]), t0);
        debounce.note(root, &event(renamed(), &["/plugins/acme/b.wasm"]), t0);
        assert_eq!(debounce.next_deadline(), Some(t0 + SETTLING.quiet));
        assert_eq!(
            debounce.settled(t0 + SETTLING.quiet),
            [PathBuf::from("/plugins/acme/b.wasm")]
        );
        assert_eq!(
            debounce.unsettled(),
            HashSet::from([PathBuf::from("/plugins/acme/a.wasm")])
        );
    }

    #[test]
    fn notification_kinds_say_whether_a_writer_is_at_work() {
        assert_eq!(writing(&EventKind::Create(CreateKind::File)), Some(true));
        assert_eq!(writing(&written()), Some(true));
        assert_eq!(writing(&EventKind::Modify(ModifyKind::Any)), Some(true));
        assert_eq!(writing(&closed()), Some(false));
        assert_eq!(writing(&renamed()), Some(false));
        assert_eq!(
            writing(&EventKind::Remove(notify::event::RemoveKind::File)),
            Some(false)
        );
        assert_eq!(writing(&EventKind::Access(AccessKind::Read)), None);
    }
}
