//! Helpers for the integration tests: plugins directories in temporary
//! folders, built from the real components of `plugbus-artifacts`, and
//! events of the point-of-sale domain.

use std::path::{Path, PathBuf};

use plugbus::{Delivery, Event, FailureKind, Host, HostConfig, LoadReport};

/// A plugins directory in a temporary folder, removed on drop.
pub struct PluginsDir {
    dir: tempfile::TempDir,
}

impl PluginsDir {
    /// An empty plugins directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the component at `wasm` to `<tenant>/<plugin>.wasm` and, when
    /// `manifest` is given, writes it as `<tenant>/<plugin>.toml`.
    pub fn add(&self, tenant: &str, plugin: &str, wasm: &str, manifest: Option<&str>) -> PathBuf {
        let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("read {wasm}: {e}"));
        self.add_bytes(tenant, plugin, &bytes, manifest)
    }

    /// Writes `bytes` as `<tenant>/<plugin>.wasm`, and the manifest if given.
    pub fn add_bytes(
        &self,
        tenant: &str,
        plugin: &str,
        bytes: &[u8],
        manifest: Option<&str>,
    ) -> PathBuf {
        let dir = self.dir.path().join(tenant);
        std::fs::create_dir_all(&dir).expect("create the tenant directory");
        let wasm = dir.join(format!("{plugin}.wasm"));
        std::fs::write(&wasm, bytes).expect("write the component");
        if let Some(manifest) = manifest {
            std::fs::write(dir.join(format!("{plugin}.toml")), manifest)
                .expect("write the manifest");
        }
        wasm
    }
}

impl Default for PluginsDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A host with the default configuration that has loaded `dir`.
pub fn host_for(dir: &PluginsDir) -> (Host, LoadReport) {
    host_with(HostConfig::default(), dir)
}

/// A host with `config` that has loaded `dir`.
pub fn host_with(config: HostConfig, dir: &PluginsDir) -> (Host, LoadReport) {
    let host = Host::new(config).expect("build the host");
    let report = host
        .load_dir(dir.path())
        .expect("load the plugins directory");
    (host, report)
}

/// A fuel ceiling far above the default one, for tests whose handler must
/// outlast its wall-clock limit rather than its fuel.
pub const AMPLE_FUEL: u64 = 1_000_000_000_000;

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_owned()
}

/// A host configuration for tests of big components (Python, JavaScript:
/// tens of seconds to compile): a compile cache under
/// `target/test-compile-cache/<name>`, shared by every test process of
/// this checkout, and a fuel ceiling of [`AMPLE_FUEL`].
pub fn cached_config(name: &str) -> HostConfig {
    HostConfig {
        compile_cache: Some(workspace().join("target/test-compile-cache").join(name)),
        max_limits: plugbus::Limits {
            fuel: AMPLE_FUEL,
            ..plugbus::Limits::DEFAULT_CEILINGS
        },
        ..HostConfig::default()
    }
}

/// Loads `components` (name, path) once per process on a host of
/// [`cached_config`]`(name)`, so that the tests running at once wait for
/// one compile of each instead of all compiling it; `warm` is the test
/// file's own.
pub fn warm_cache(warm: &'static std::sync::OnceLock<()>, name: &str, components: &[(&str, &str)]) {
    warm.get_or_init(|| {
        let plugins = PluginsDir::new();
        for (plugin, wasm) in components {
            plugins.add("warm", plugin, wasm, None);
        }
        let (_host, report) = host_with(cached_config(name), &plugins);
        assert!(report.errors.is_empty(), "{report:#?}");
    });
}

/// An event of `tenant` with type `ty`, a JSON payload and the given id.
pub fn event(tenant: &str, ty: &str, id: &str, data: serde_json::Value) -> Event {
    let json = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": ty,
        "time": "2026-11-22T10:00:00Z",
        "datacontenttype": "application/json",
        "tenant": tenant,
        "data": data,
    });
    Event::from_json_value(json).expect("a valid test event")
}

/// A `inventory.stock_changed` event of `tenant` for `sku`.
pub fn stock_changed(tenant: &str, id: &str, sku: &str, quantity: i64) -> Event {
    event(
        tenant,
        "inventory.stock_changed",
        id,
        serde_json::json!({ "sku": sku, "new_quantity": quantity }),
    )
    .to_builder()
    .subject(sku.to_owned())
    .build()
    .expect("a valid test event")
}

/// The deliveries to `plugin`.
pub fn to_plugin<'a>(deliveries: &'a [Delivery], plugin: &str) -> Vec<&'a Delivery> {
    deliveries.iter().filter(|d| d.plugin == plugin).collect()
}

/// The failure kind of a delivery, or `None` when it was handled.
pub fn kind(delivery: &Delivery) -> Option<FailureKind> {
    delivery.outcome.failure_kind()
}

/// The resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

/// Publishes an event of `tenant` with type `ty`, id `id` and an empty JSON
/// object as payload, and returns its deliveries.
pub async fn publish(host: &Host, tenant: &str, ty: &str, id: &str) -> Vec<Delivery> {
    host.publish(event(tenant, ty, id, serde_json::json!({})))
        .await
        .expect("a valid test event")
        .deliveries
}

/// The failure of a delivery that must have failed.
pub fn failure(delivery: &Delivery) -> plugbus::Failure {
    delivery
        .outcome
        .failure()
        .unwrap_or_else(|| panic!("expected a failed delivery: {delivery:#?}"))
        .clone()
}

pub use plugbus::loader::with_custom_section;

/// Replaces `path` with `bytes` the way a deployment should: written to a
/// hidden file beside it, then renamed over it in one step.
pub fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let name = path
        .file_name()
        .expect("a file path")
        .to_string_lossy()
        .into_owned();
    let temporary = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&temporary, bytes).expect("write the new version");
    std::fs::rename(&temporary, path).expect("rename it into place");
}

/// Which event log a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite log, in a temporary data directory.
    Sqlite,
    /// NATS JetStream, on a nats-server of the test's own.
    Nats,
}

/// Where a test's event logs are kept: a temporary data directory (the
/// embedded log) or a nats-server started for the test (NATS). Opening a
/// log again is what a restarted host does; a log in another `space` is
/// another, empty one (a subdirectory, or another NATS prefix).
///
/// Every NATS log opened is kept here until the place is dropped, outside
/// the test's runtime: a NATS log owns a runtime of its own, which may not
/// be dropped on a runtime's worker. Run a test on a place with
/// [`run_on`].
pub struct LogPlace {
    backend: Backend,
    dir: tempfile::TempDir,
    server: Option<plugbus_nats_server::NatsServer>,
    kept: std::sync::Mutex<Vec<std::sync::Arc<dyn plugbus::log::EventLog>>>,
}

impl LogPlace {
    /// A new place for `backend`'s logs (a nats-server starts for NATS).
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            dir: tempfile::tempdir().expect("create a temporary directory"),
            server: (backend == Backend::Nats).then(plugbus_nats_server::NatsServer::start),
            kept: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The nats-server, for NATS (to kill and restart it).
    pub fn server(&mut self) -> Option<&mut plugbus_nats_server::NatsServer> {
        self.server.as_mut()
    }

    /// Opens the main log with the default settings.
    pub async fn open(&self) -> std::sync::Arc<dyn plugbus::log::EventLog> {
        self.open_in("main", plugbus::log::MemoryLogConfig::default())
            .await
    }

    /// Opens the main log with `config`'s duplicate window and dead-letter
    /// quotas.
    pub async fn open_with(
        &self,
        config: plugbus::log::MemoryLogConfig,
    ) -> std::sync::Arc<dyn plugbus::log::EventLog> {
        self.open_in("main", config).await
    }

    /// Opens the log of `space` (a-z and 0-9) with `config`'s duplicate
    /// window and dead-letter quotas.
    pub async fn open_in(
        &self,
        space: &str,
        config: plugbus::log::MemoryLogConfig,
    ) -> std::sync::Arc<dyn plugbus::log::EventLog> {
        use plugbus::log::{SqliteLog, SqliteLogConfig};
        use plugbus::log_nats::{NatsLog, NatsLogConfig, Prefix};
        match &self.server {
            None => std::sync::Arc::new(
                SqliteLog::open(
                    &self.dir.path().join(space),
                    SqliteLogConfig {
                        duplicate_window: config.duplicate_window,
                        dead_letters: config.dead_letters,
                        tenant_dead_letters: config.tenant_dead_letters,
                        ..SqliteLogConfig::default()
                    },
                )
                .expect("open the embedded log"),
            ),
            Some(server) => {
                let nats = NatsLogConfig {
                    servers: vec![server.url()],
                    prefix: Prefix::new(&format!("t{space}")).expect("a prefix"),
                    duplicate_window: config.duplicate_window,
                    dead_letters: config.dead_letters,
                    tenant_dead_letters: config.tenant_dead_letters,
                    ..NatsLogConfig::default()
                };
                // Opening blocks on the log's own runtime: not on a worker
                // of the test's.
                let log: std::sync::Arc<dyn plugbus::log::EventLog> = std::sync::Arc::new(
                    tokio::task::spawn_blocking(move || NatsLog::open(nats))
                        .await
                        .expect("the opening did not panic")
                        .expect("open the NATS log"),
                );
                self.kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(log.clone());
                log
            }
        }
    }
}

/// A test body on a place: `|place| Box::pin(body(place))`.
pub type OnPlace<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Runs `test` on a new [`LogPlace`] of `backend`, on a runtime of two
/// worker threads (as `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]`), and drops the place (its logs, its
/// nats-server) once the runtime is gone.
pub fn run_on(backend: Backend, test: impl for<'a> FnOnce(&'a LogPlace) -> OnPlace<'a>) {
    let place = LogPlace::new(backend);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(test(&place));
    drop(runtime);
    drop(place);
}

/// Waits, at most `patience` (a guard against hanging, not a timing), for
/// the first reload event that `accept` takes, and returns it.
pub async fn wait_for_reload(
    events: &mut tokio::sync::broadcast::Receiver<plugbus::ReloadEvent>,
    patience: std::time::Duration,
    mut accept: impl FnMut(&plugbus::ReloadEvent) -> bool,
) -> plugbus::ReloadEvent {
    tokio::time::timeout(patience, async {
        loop {
            match events.recv().await {
                Ok(event) if accept(&event) => return event,
                Ok(_) => {}
                Err(e) => panic!("reload events ended: {e}"),
            }
        }
    })
    .await
    .expect("the reload happened")
}
