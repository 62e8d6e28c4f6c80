//! Large components (Python's componentize-py makes 18 MB ones, JavaScript's
//! componentize-js 12 MB ones; 25-45 s to compile) off the delivery path:
//! a first load leaves their compile to the background while the other
//! plugins serve, two tenants' same component is compiled once, and the
//! compile cache serves a restart and a revert.
//!
//! The background compile is tested with the Python fixture (a real, slow
//! compile, so that events are seen handled meanwhile); the others with
//! the noop fixture padded with 8 MiB of custom section: as large, though
//! quick to compile. What the large components cost is measured by
//! `plugbus-bench bench-langs`, not here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugbus::cache::CompileSource;
use plugbus::{Event, Host, HostConfig, Outcome, ReloadEvent};
use plugbus_artifacts as artifacts;
use tokio::sync::broadcast;

/// How long a test waits for a compile before it gives up: a guard
/// against hanging, not a timing assertion (two cores shared by several
/// builds compile an 18 MB component in several minutes).
const PATIENCE: Duration = Duration::from_secs(900);

/// What `plugbus serve` compiles in the background.
const BACKGROUND: u64 = 4 * 1024 * 1024;

/// The Python fixture: a real large component, slow to compile.
fn python_component() -> Vec<u8> {
    std::fs::read(artifacts::FIXTURE_PY_BEHAVIOURS).expect("read the Python fixture")
}

/// The noop fixture padded to a large component that compiles quickly.
fn padded_noop() -> Vec<u8> {
    let noop = std::fs::read(artifacts::FIXTURE_NOOP).expect("read the noop fixture");
    plugbus::loader::with_custom_section(&noop, "padding", 8 * 1024 * 1024)
}

fn write(root: &Path, tenant: &str, name: &str, wasm: &[u8], manifest: Option<&str>) -> PathBuf {
    let dir = root.join(tenant);
    std::fs::create_dir_all(&dir).expect("create the tenant folder");
    if let Some(manifest) = manifest {
        std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write the manifest");
    }
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).expect("write the component");
    path
}

fn event(tenant: &str, ty: &str, id: &str) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/test",
        "type": ty,
        "tenant": tenant,
        "datacontenttype": "application/json",
        "data": { "sku": "sku-1", "new_quantity": 3 },
    }))
    .expect("a valid event")
}

fn config(cache: &Path) -> HostConfig {
    HostConfig {
        compile_cache: Some(cache.to_owned()),
        background_compile_bytes: Some(BACKGROUND),
        ..HostConfig::default()
    }
}

/// Waits for the first reload event that `accept` takes.
async fn wait_for(
    events: &mut broadcast::Receiver<ReloadEvent>,
    mut accept: impl FnMut(&ReloadEvent) -> bool,
) -> ReloadEvent {
    tokio::time::timeout(PATIENCE, async {
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

/// A first load returns without the large component that must be
/// compiled, the small plugin serves at once, and the large one serves
/// once compiled (from the log's start, for a durable bus: it counts as
/// loading meanwhile, so retention keeps its events). The Python fixture
/// compiles for tens of seconds: events are handled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_component_compiles_in_the_background_while_the_others_serve() {
    let big = python_component();
    let plugins = tempfile::tempdir().expect("plugins");
    let cache = tempfile::tempdir().expect("cache");
    let noop = std::fs::read(artifacts::FIXTURE_NOOP).expect("read the noop fixture");
    write(
        plugins.path(),
        "acme",
        "small",
        &noop,
        Some("subscribe = [\"small.*\"]\n"),
    );
    write(
        plugins.path(),
        "acme",
        "big",
        &big,
        Some("subscribe = [\"big.*\"]\n"),
    );

    let host = Arc::new(Host::new(config(cache.path())).expect("a host"));
    let mut events = host.reload_events();
    let report = host.load_dir(plugins.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let loaded: Vec<_> = report.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        loaded,
        ["small"],
        "the large one compiles in the background"
    );
    let statuses: Vec<_> = host.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(statuses, ["small"], "a plugin not loaded yet has no status");

    let mut during = 0;
    let mut i = 0;
    let loaded = loop {
        let compiling = host.loading() == [("acme".to_owned(), "big".to_owned())];
        let report = host
            .publish(event("acme", "small.ping", &format!("e{i}")))
            .await
            .expect("published");
        i += 1;
        assert_eq!(report.deliveries.len(), 1);
        assert_eq!(report.deliveries[0].outcome, Outcome::Handled);
        if compiling && host.loading().len() == 1 {
            during += 1;
        }
        // Stops also when the compile ended first, for the assertion below
        // to say so instead of looping.
        if during >= 20 || host.loading().is_empty() {
            break wait_for(&mut events, |e| e.plugin() == "big").await;
        }
    };
    assert!(
        matches!(
            loaded,
            ReloadEvent::Loaded {
                compile: CompileSource::CacheMiss,
                ..
            }
        ),
        "{loaded:?}"
    );
    assert!(during >= 20, "events were handled while it compiled");
    assert!(host.loading().is_empty());
    let report = host
        .publish(event("acme", "big.ping", "b1"))
        .await
        .expect("published");
    assert_eq!(report.deliveries.len(), 1, "the large one serves");

    // A restart: from the cache, loaded before load_dir returns.
    drop(host);
    let host = Host::new(config(cache.path())).expect("a host");
    let report = host.load_dir(plugins.path()).expect("load");
    assert_eq!(report.loaded.len(), 2, "{:?}", report.errors);
    assert_eq!(host.cache_stats().map(|s| s.hits), Some(2));
}

/// Two tenants' same large component, loaded at once, is compiled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_large_component_of_two_tenants_is_compiled_once() {
    let big = padded_noop();
    let plugins = tempfile::tempdir().expect("plugins");
    let cache = tempfile::tempdir().expect("cache");
    write(plugins.path(), "acme", "big", &big, None);
    write(plugins.path(), "globex", "big", &big, None);
    let host = Arc::new(Host::new(config(cache.path())).expect("a host"));
    let mut events = host.reload_events();
    let report = host.load_dir(plugins.path()).expect("load");
    assert!(report.loaded.is_empty() && report.errors.is_empty());
    let mut sources = Vec::new();
    for _ in 0..2 {
        match wait_for(&mut events, |e| matches!(e, ReloadEvent::Loaded { .. })).await {
            ReloadEvent::Loaded { compile, .. } => sources.push(compile),
            other => panic!("{other:?}"),
        }
    }
    sources.sort_by_key(|s| format!("{s:?}"));
    let stats = host.cache_stats().expect("a cache");
    assert_eq!(stats.misses, 1, "compiled once: {sources:?}");
    // The other waited for that compile (shared), or, when it came after
    // it, found it in the cache.
    assert!(
        sources == [CompileSource::CacheMiss, CompileSource::Shared]
            || sources == [CompileSource::CacheHit, CompileSource::CacheMiss],
        "{sources:?}"
    );
    assert_eq!(host.plugins().len(), 2);
}

/// `plugbus serve --stdin`: a large component compiled in the background
/// handles the input too (from the log's start, as its manifest says)
/// before the host exits at the end of the input.
#[test]
fn serve_stdin_waits_for_a_large_component_compiled_in_the_background() {
    use std::io::Write as _;
    let big = padded_noop();
    let root = tempfile::tempdir().expect("a directory");
    let plugins = root.path().join("plugins");
    let noop = std::fs::read(artifacts::FIXTURE_NOOP).expect("read the noop fixture");
    write(&plugins, "acme", "small", &noop, None);
    write(
        &plugins,
        "acme",
        "big",
        &big,
        Some("subscribe = [\"*\"]\nstart = \"earliest\"\n"),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["serve", "--listen", "off", "--stdin", "--plugins"])
        .arg(&plugins)
        .arg("--data")
        .arg(root.path().join("data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run plugbus serve");
    let line = serde_json::json!({
        "specversion": "1.0", "id": "e1", "source": "/test", "type": "order.created",
        "tenant": "acme", "data": {},
    });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{line}\n").as_bytes())
        .expect("write the input");
    // A guard against hanging (a regression that waits forever), not a
    // timing: the noop fixture, padded, compiles in seconds.
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(600));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let output = child.wait_with_output().expect("wait for plugbus serve");
    drop(watchdog);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("compiling in the background"), "{stderr}");
    let plugins: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|d| d["event_id"] == "e1")
        .filter_map(|d| d["plugin"].as_str().map(str::to_owned))
        .collect();
    assert!(plugins.contains(&"big".to_owned()), "{stdout}\n{stderr}");
    assert!(plugins.contains(&"small".to_owned()), "{stdout}\n{stderr}");
}
