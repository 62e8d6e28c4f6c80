//! The Python plugins (`plugins/examples/low-stock-alert-py`,
//! `plugins/fixtures/py-behaviours`), built by `plugbus-artifacts` with
//! componentize-py, in the real host (outbound HTTP against a local
//! server, secrets); and the Python SDK's own tests (pytest), run from
//! here so that `cargo test` covers them.
//!
//! A Python component takes about 25 s to compile, so every host of this
//! file uses one compile cache (`target/test-compile-cache/python`, private
//! to the user) and the first test to get there fills it once for the
//! process; the others, and later runs, load from it.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use plugbus::durable::{DurableBus, DurableConfig, RetryPolicy};
use plugbus::{Delivery, Event, FailureKind, Host, LoadReport, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{
    Backend, LogPlace, PluginsDir, cached_config, event, failure, host_with, stock_changed,
    to_plugin, workspace,
};

/// A host on `dir` whose Python components come from the compile cache,
/// filled once per process (concurrent tests wait for it).
fn python_host(dir: &PluginsDir) -> (Host, LoadReport) {
    static WARM: OnceLock<()> = OnceLock::new();
    plugbus_tests::warm_cache(
        &WARM,
        "python",
        &[
            ("example", artifacts::EXAMPLE_LOW_STOCK_ALERT_PY),
            ("fixture", artifacts::FIXTURE_PY_BEHAVIOURS),
        ],
    );
    let (host, report) = host_with(cached_config("python"), dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (host, report)
}

/// The fixture under `manifest`, as plugin `py` of tenant `lab`.
fn fixture_host(manifest: &str) -> Host {
    let dir = PluginsDir::new();
    dir.add(
        "lab",
        "py",
        artifacts::FIXTURE_PY_BEHAVIOURS,
        Some(manifest),
    );
    python_host(&dir).0
}

/// Delivers an event of type `ty` with `data` to plugin `py` of tenant `lab`.
async fn deliver(host: &Host, ty: &str, id: &str, data: serde_json::Value) -> Delivery {
    let report = host
        .publish(event("lab", ty, id, data))
        .await
        .expect("a valid event");
    // The deliveries of the events it emitted (`fixture.*`) come back too.
    let mut to_py: Vec<_> = to_plugin(&report.deliveries, "py")
        .into_iter()
        .filter(|d| d.event_id == id)
        .cloned()
        .collect();
    assert_eq!(to_py.len(), 1, "{:#?}", report.deliveries);
    to_py.remove(0)
}

const FIXTURE: &str = "subscribe = [\"fixture.*\"]";

/// The Python example and the Rust one, side by side on the same events:
/// the same outcomes, emitted types and subjects, and failure kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_low_stock_alert_behaves_like_the_rust_one() {
    let dir = PluginsDir::new();
    let manifest = "subscribe = [\"inventory.stock_changed\"]\n[config]\nthreshold = \"10\"";
    dir.add(
        "acme-pos",
        "rust",
        artifacts::LOW_STOCK_ALERT,
        Some(manifest),
    );
    dir.add(
        "acme-pos",
        "python",
        artifacts::EXAMPLE_LOW_STOCK_ALERT_PY,
        Some(manifest),
    );
    let (host, _) = python_host(&dir);
    let bad = stock_changed("acme-pos", "evt-bad", "sku-1", 1)
        .to_builder()
        .data(br#"{"sku": 12}"#.to_vec())
        .build()
        .expect("a valid envelope");
    let events = [
        stock_changed("acme-pos", "evt-50", "sku-1", 50),
        stock_changed("acme-pos", "evt-10", "sku-1", 10),
        stock_changed("acme-pos", "evt-0", "sku-2", 0),
        stock_changed("acme-pos", "evt-neg", "sku-3", -1),
        bad,
    ];
    let mut emitted = Vec::new();
    for event in events {
        let report = host.publish(event.clone()).await.expect("a valid event");
        let summary = |plugin: &str| {
            let deliveries = to_plugin(&report.deliveries, plugin);
            assert_eq!(deliveries.len(), 1, "{:#?}", report.deliveries);
            let d = deliveries[0];
            let types: Vec<_> = d
                .emitted
                .iter()
                .map(|e| (e.ty.clone(), e.subject.clone()))
                .collect();
            (d.outcome.failure_kind(), types)
        };
        assert_eq!(summary("python"), summary("rust"), "{}", event.id());
        emitted.push(summary("python"));
    }
    assert_eq!(emitted[0], (None, vec![]));
    assert_eq!(
        emitted[2].1,
        [
            ("inventory.low_stock".to_owned(), Some("sku-2".to_owned())),
            (
                "inventory.out_of_stock".to_owned(),
                Some("sku-2".to_owned())
            )
        ]
    );
    assert_eq!(emitted[3].0, Some(FailureKind::HandlerPermanent));
    assert_eq!(emitted[4].0, Some(FailureKind::HandlerPermanent));

    // The payloads are the Rust example's too.
    let python = host.plugin("acme-pos", "python").expect("loaded");
    let rust = host.plugin("acme-pos", "rust").expect("loaded");
    let root = stock_changed("acme-pos", "root-1", "sku-7", 0);
    let (_, from_python) = python.deliver(&root).expect("deliverable");
    let (_, from_rust) = rust.deliver(&root).expect("deliverable");
    let payloads = |events: &[Event]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| serde_json::from_slice(e.data()).expect("JSON payload"))
            .collect()
    };
    assert_eq!(payloads(&from_python), payloads(&from_rust));
    assert_eq!(from_python[0].datacontenttype(), Some("application/json"));
    assert_eq!(
        from_python[0].source(),
        "plugbus://acme-pos/python",
        "the host sets the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_emitted_and_handler_errors() {
    let host = fixture_host(FIXTURE);
    let d = deliver(&host, "fixture.handled", "h-1", serde_json::json!({})).await;
    assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
    let d = deliver(
        &host,
        "fixture.emit",
        "e-1",
        serde_json::json!({"count": 3, "subject": "s-1"}),
    )
    .await;
    assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
    assert_eq!(d.emitted.len(), 3);
    assert!(
        d.emitted
            .iter()
            .all(|e| e.ty == "fixture.emitted" && e.subject.as_deref() == Some("s-1"))
    );

    let d = deliver(&host, "fixture.retryable", "r-1", serde_json::json!({})).await;
    let f = failure(&d);
    assert_eq!(f.kind, FailureKind::HandlerRetryable);
    assert_eq!(f.message, "the fixture asks for a retry");
    let d = deliver(&host, "fixture.permanent", "p-1", serde_json::json!({})).await;
    let f = failure(&d);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert_eq!(f.message, "the fixture refuses this event");

    // A failed delivery's emits are discarded by the host.
    let d = deliver(
        &host,
        "fixture.count",
        "c-1",
        serde_json::json!({"fail": true}),
    )
    .await;
    assert_eq!(failure(&d).kind, FailureKind::HandlerRetryable);
    assert!(d.emitted.is_empty(), "{d:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_is_a_retryable_failure_with_its_type_and_text() {
    let host = fixture_host(FIXTURE);
    let d = deliver(&host, "fixture.raise", "x-1", serde_json::json!({})).await;
    let f = failure(&d);
    assert_eq!(f.kind, FailureKind::HandlerRetryable, "{f:?}");
    assert!(
        f.message
            .starts_with("uncaught RuntimeError: the fixture raised on purpose"),
        "{f:?}"
    );
    assert!(
        f.message.contains("Traceback") && f.message.contains("in handle"),
        "{f:?}"
    );
    // The next event gets a working instance.
    let d = deliver(&host, "fixture.handled", "x-2", serde_json::json!({})).await;
    assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_exhaustion_a_timeout_and_the_memory_limit() {
    // Ample time: the fuel runs out.
    let host = fixture_host(
        "subscribe = [\"fixture.*\"]\n[limits]\nfuel = 20_000_000\ntimeout_ms = 30_000",
    );
    let d = deliver(&host, "fixture.spin", "f-1", serde_json::json!({})).await;
    assert_eq!(failure(&d).kind, FailureKind::FuelExhausted, "{d:#?}");
    // Ample fuel: the wall clock stops it.
    let host = fixture_host(
        "subscribe = [\"fixture.*\"]\n[limits]\nfuel = 1_000_000_000_000\ntimeout_ms = 500",
    );
    let d = deliver(&host, "fixture.spin", "t-1", serde_json::json!({})).await;
    assert_eq!(failure(&d).kind, FailureKind::Timeout, "{d:#?}");
    // The default limits: the memory limit stops a grab.
    let host = fixture_host(FIXTURE);
    let d = deliver(&host, "fixture.grow", "m-1", serde_json::json!({})).await;
    assert_eq!(failure(&d).kind, FailureKind::MemoryLimit, "{d:#?}");
    let d = deliver(&host, "fixture.handled", "m-2", serde_json::json!({})).await;
    assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
}

/// Waits until `done` holds (the consumers work in the background).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Through the durable log, the fixture's counter is committed with the
/// handled deliveries only: a failed attempt's write and emit are not.
#[test]
fn state_is_committed_only_on_success_through_the_durable_log() {
    plugbus_tests::run_on(Backend::Sqlite, |place| Box::pin(durable_state(place)));
}

async fn durable_state(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add(
        "lab",
        "py",
        artifacts::FIXTURE_PY_BEHAVIOURS,
        Some("subscribe = [\"fixture.*\"]\n[retry]\nmax_attempts = 2"),
    );
    let host = Arc::new(python_host(&dir).0);
    let log = place.open().await;
    let durable = DurableConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        },
        ..DurableConfig::default()
    };
    let bus = DurableBus::start(host.clone(), log, durable)
        .await
        .expect("start the bus");
    let appended = bus
        .publish(vec![
            event("lab", "fixture.count", "c-1", serde_json::json!({})),
            event(
                "lab",
                "fixture.count",
                "c-2",
                serde_json::json!({"fail": true}),
            ),
            event("lab", "fixture.count", "c-3", serde_json::json!({})),
        ])
        .await
        .expect("publish");
    let head = appended.last().expect("appended").seq;
    until("the plugin is past the events", || {
        bus.log()
            .cursor("lab", "py")
            .expect("cursor")
            .is_some_and(|c| c >= head)
    })
    .await;
    let count = bus
        .log()
        .get("lab", "py", "count")
        .expect("read the state")
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    assert_eq!(count.as_deref(), Some("2"));
    let counted: Vec<_> = bus
        .log()
        .read("lab", 0, 1000)
        .expect("read the log")
        .into_iter()
        .filter(|s| s.event.ty() == "fixture.counted")
        .map(|s| String::from_utf8_lossy(s.event.data()).into_owned())
        .collect();
    assert_eq!(counted, [r#"{"count":1}"#, r#"{"count":2}"#]);
    assert_eq!(host.stats().failures_of(FailureKind::HandlerRetryable), 2);
    bus.shutdown().await;
}

/// The directories whose pytest suites run here: the SDK's tests, the
/// example's and the fixture's.
const PYTEST_DIRS: &[&str] = &[
    "guest-sdk/python",
    "plugins/examples/low-stock-alert-py",
    "plugins/fixtures/py-behaviours",
];
#[test]
fn the_python_sdk_example_and_fixture_pass_pytest() {
    for dir in PYTEST_DIRS {
        // One process per directory: each has its own `app` module.
        let output = Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .current_dir(workspace().join(dir))
            .env("PYTHONPATH", artifacts::PYTEST_PATH)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run python3 -m pytest");
        assert!(
            output.status.success(),
            "pytest failed in {dir}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Hot reload of a Python plugin: the fixture renamed over the example,
/// then the example back (a revert), each replaces the plugin with code
/// from the compile cache (both are in it), and the new version serves
/// the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_hot_reloads_from_the_compile_cache() {
    let read = |path: &str| std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let example = read(artifacts::EXAMPLE_LOW_STOCK_ALERT_PY);
    let fixture = read(artifacts::FIXTURE_PY_BEHAVIOURS);
    let dir = PluginsDir::new();
    let wasm = dir.add_bytes("lab", "py", &example, None);
    let host = Arc::new(python_host(&dir).0);
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch the plugins");
    for (i, bytes) in [&fixture, &example].into_iter().enumerate() {
        plugbus_tests::replace_by_rename(&wasm, bytes);
        let replaced = plugbus_tests::wait_for_reload(&mut events, Duration::from_secs(300), |e| {
            matches!(
                e,
                plugbus::ReloadEvent::Replaced { .. } | plugbus::ReloadEvent::Failed { .. }
            )
        })
        .await;
        let plugbus::ReloadEvent::Replaced {
            version, compile, ..
        } = replaced
        else {
            panic!("swap {i} failed: {replaced:?}");
        };
        assert_eq!(compile, plugbus::cache::CompileSource::CacheHit, "swap {i}");
        let delivery = deliver(
            &host,
            "fixture.handled",
            &format!("r-{i}"),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
        assert_eq!(delivery.plugin_version, version, "the new version serves");
    }
}

// Outbound HTTP and secrets (issue 18).

/// A local HTTP server that counts the requests it gets and answers 200.
struct Receiver {
    /// `http://127.0.0.1:<port>`.
    origin: String,
    /// The requests it got.
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let router = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().expect("its address").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            origin: format!("http://127.0.0.1:{port}"),
            hits,
        }
    }
}

/// Delivers `event` to plugin `plugin` of tenant `lab` and returns the
/// payload of the one event of type `ty` it emitted.
async fn emitted_payload(host: &Host, plugin: &str, event: Event, ty: &str) -> serde_json::Value {
    let plugin = host.plugin("lab", plugin).expect("loaded");
    let (delivery, emitted) =
        tokio::task::spawn_blocking(move || plugin.deliver(&event).expect("deliverable"))
            .await
            .expect("the delivery's thread");
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    let [emitted] = &emitted[..] else {
        panic!("one event: {emitted:?}");
    };
    assert_eq!(emitted.ty(), ty);
    serde_json::from_slice(emitted.data()).expect("a JSON payload")
}

/// A Python plugin whose manifest allows no origin: its requests, to a
/// local server and to the cloud metadata address, fail in the handler as
/// `HttpDeniedError` (permanent) and reach nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_allowed_nothing_is_denied_and_reaches_nothing() {
    let receiver = Receiver::start().await;
    let host = fixture_host(FIXTURE);
    let requests = serde_json::json!({"requests": [
        {"method": "POST", "url": format!("{}/hook", receiver.origin), "body": "hello"},
        {"method": "GET", "url": "http://169.254.169.254/latest/meta-data/"},
    ]});
    let result = emitted_payload(
        &host,
        "py",
        event("lab", "fixture.http", "d-1", requests),
        "probe.result",
    )
    .await;
    let results = result["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{result:#}");
    for denied in results {
        assert_eq!(denied["error_class"], "HttpDeniedError", "{denied:#}");
        assert_eq!(denied["retryable"], false, "{denied:#}");
        assert!(denied["status"].is_null(), "{denied:#}");
    }
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 0, "nothing arrived");
}

/// `ctx.secret` reads `None` for a name the manifest does not grant, and
/// for a granted one the operator gave the tenant no value for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_reads_no_secret_it_was_not_given() {
    let dir = PluginsDir::new();
    dir.add(
        "lab",
        "py",
        artifacts::FIXTURE_PY_BEHAVIOURS,
        Some("subscribe = [\"fixture.*\"]\n[secrets]\ngrant = [\"webhook_token\"]"),
    );
    let host = python_host(&dir).0;
    let ask = event(
        "lab",
        "fixture.secret",
        "s-1",
        serde_json::json!({"names": ["webhook_token", "smtp_password"]}),
    );
    assert_eq!(
        emitted_payload(&host, "py", ask, "probe.secret").await,
        serde_json::json!({"values": {"webhook_token": null, "smtp_password": null}})
    );
}
