//! The JavaScript plugins (componentize-js, `guest-sdk/js`) in the real
//! host: the `low-stock-alert-js` example and the `js-behaviours` fixture,
//! built by `plugins/artifacts`; and the SDK's, the example's and the
//! template's native tests under `node --test`.
//!
//! A JavaScript component takes tens of seconds to compile. Every host of
//! this file shares a compile cache in a private directory under `target/`
//! (warmed once per test process, before any test loads a component), so
//! each component is compiled once and every other load reads the cache.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use plugbus::durable::{DurableBus, DurableConfig, RetryPolicy};
use plugbus::{FailureKind, Host, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{
    Backend, PluginsDir, cached_config, event, failure, host_with, kind, stock_changed, to_plugin,
    workspace,
};

/// A host (with the shared compile cache, warmed once per process with
/// both JavaScript components) that has loaded `dir` without errors.
fn host(dir: &PluginsDir) -> Host {
    static WARM: OnceLock<()> = OnceLock::new();
    plugbus_tests::warm_cache(
        &WARM,
        "js",
        &[
            ("example", artifacts::EXAMPLE_LOW_STOCK_ALERT_JS),
            ("fixture", artifacts::FIXTURE_JS_BEHAVIOURS),
        ],
    );
    let (host, report) = host_with(cached_config("js"), dir);
    assert!(report.errors.is_empty(), "{report:#?}");
    host
}

/// The fixture as plugin `fixture` of tenant `shop`, with `limits`.
fn fixture(limits: &str) -> PluginsDir {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "fixture",
        artifacts::FIXTURE_JS_BEHAVIOURS,
        Some(&format!(
            "subscribe = [\"js.*\"]\n[config]\ngreeting = \"hi\"\n{limits}"
        )),
    );
    dir
}

async fn deliver(host: &Host, ty: &str, id: &str, data: serde_json::Value) -> plugbus::Delivery {
    let deliveries = host
        .publish(event("shop", ty, id, data))
        .await
        .expect("a valid event")
        .deliveries;
    // The fixture's emits go to `out.*`, which nothing subscribes to.
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    deliveries.into_iter().next().expect("one delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_emits_low_and_out_of_stock() {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "low-stock",
        artifacts::EXAMPLE_LOW_STOCK_ALERT_JS,
        Some("subscribe = [\"inventory.stock_changed\"]\n[config]\nthreshold = \"5\"\n"),
    );
    let host = host(&dir);
    let report = host
        .publish(stock_changed("shop", "s-1", "sku-1", 9))
        .await
        .expect("valid");
    let above = to_plugin(&report.deliveries, "low-stock");
    assert_eq!(above[0].outcome, Outcome::Handled, "{above:#?}");
    assert!(above[0].emitted.is_empty());

    let report = host
        .publish(stock_changed("shop", "s-2", "sku-1", 0))
        .await
        .expect("valid");
    let zero = to_plugin(&report.deliveries, "low-stock");
    assert_eq!(zero[0].outcome, Outcome::Handled, "{zero:#?}");
    let types: Vec<_> = zero[0].emitted.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(types, ["inventory.low_stock", "inventory.out_of_stock"]);
    assert!(
        zero[0]
            .emitted
            .iter()
            .all(|e| e.subject.as_deref() == Some("sku-1"))
    );

    let report = host
        .publish(stock_changed("shop", "s-3", "sku-1", -1))
        .await
        .expect("valid");
    let negative = failure(to_plugin(&report.deliveries, "low-stock")[0]);
    assert_eq!(negative.kind, FailureKind::HandlerPermanent);
    assert_eq!(negative.message, "sku-1: new_quantity -1 is negative");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_emitted_and_handler_errors() {
    let host = host(&fixture(""));
    assert_eq!(
        deliver(&host, "js.handled", "h-1", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
    assert_eq!(
        deliver(&host, "js.log", "l-1", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
    let emit = deliver(&host, "js.emit", "e-1", serde_json::json!({ "a": 1 })).await;
    assert_eq!(emit.outcome, Outcome::Handled, "{emit:#?}");
    assert_eq!(emit.emitted.len(), 1);
    assert_eq!(emit.emitted[0].ty, "out.echoed");

    let retryable = failure(&deliver(&host, "js.retryable", "r-1", serde_json::json!({})).await);
    assert_eq!(retryable.kind, FailureKind::HandlerRetryable);
    assert_eq!(retryable.message, "the dependency is down");
    let permanent = failure(&deliver(&host, "js.permanent", "p-1", serde_json::json!({})).await);
    assert_eq!(permanent.kind, FailureKind::HandlerPermanent);
    assert_eq!(permanent.message, "the event is malformed");
    // The instance survives a handler error: the next event is handled.
    assert_eq!(
        deliver(&host, "js.handled", "h-2", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_is_a_retryable_failure_with_its_name_and_text() {
    let host = host(&fixture(""));
    let type_error = failure(&deliver(&host, "js.type-error", "t-1", serde_json::json!({})).await);
    assert_eq!(
        type_error.kind,
        FailureKind::HandlerRetryable,
        "{type_error:?}"
    );
    assert!(
        type_error.message.starts_with("uncaught TypeError: ")
            && type_error.message.contains("readMissing@"),
        "{}",
        type_error.message
    );
    let string = failure(&deliver(&host, "js.throw-string", "t-2", serde_json::json!({})).await);
    assert_eq!(string.kind, FailureKind::HandlerRetryable);
    assert_eq!(string.message, "uncaught string: a plain string");
    assert_eq!(
        deliver(&host, "js.handled", "t-3", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_runs_out_of_fuel() {
    let host = host(&fixture("[limits]\nfuel = 20_000_000\n"));
    let spin = deliver(&host, "js.spin", "f-1", serde_json::json!({})).await;
    assert_eq!(kind(&spin), Some(FailureKind::FuelExhausted), "{spin:#?}");
    assert_eq!(
        deliver(&host, "js.handled", "f-2", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_with_ample_fuel_times_out() {
    // The limit also bounds the instantiation at load (about 10 ms alone,
    // more on a loaded machine), so it is well above that; a billion fuel
    // lasts seconds.
    let host = host(&fixture(
        "[limits]\nfuel = 1_000_000_000_000\ntimeout_ms = 500\n",
    ));
    let spin = deliver(&host, "js.spin", "t-1", serde_json::json!({})).await;
    assert_eq!(kind(&spin), Some(FailureKind::Timeout), "{spin:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_grab_hits_the_memory_limit() {
    let host = host(&fixture(
        "[limits]\nmemory_mib = 24\nfuel = 1_000_000_000\ntimeout_ms = 5000\n",
    ));
    let grow = deliver(&host, "js.grow", "m-1", serde_json::json!({})).await;
    assert_eq!(kind(&grow), Some(FailureKind::MemoryLimit), "{grow:#?}");
    assert_eq!(
        deliver(&host, "js.handled", "m-2", serde_json::json!({}))
            .await
            .outcome,
        Outcome::Handled
    );
}

/// Waits until `done` holds (the consumers work in the background).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn state_is_committed_through_the_durable_log_only_on_success() {
    plugbus_tests::run_on(Backend::Sqlite, |place| {
        Box::pin(async move {
            let dir = fixture("");
            let host = Arc::new(host(&dir));
            let log = place.open().await;
            let config = DurableConfig {
                retry: RetryPolicy {
                    max_attempts: 2,
                    base_backoff: Duration::from_millis(5),
                    max_backoff: Duration::from_millis(20),
                },
                ..DurableConfig::default()
            };
            let bus = DurableBus::start(host.clone(), log, config)
                .await
                .expect("start the bus");
            let appended = bus
                .publish(vec![
                    event("shop", "js.state", "s-1", serde_json::json!({})),
                    // Fails after writing and emitting, on both attempts:
                    // a dead letter whose writes and emits are dropped.
                    event(
                        "shop",
                        "js.state",
                        "s-2",
                        serde_json::json!({ "fail": true }),
                    ),
                    event("shop", "js.state", "s-3", serde_json::json!({})),
                ])
                .await
                .expect("publish");
            let head = appended.last().expect("appended").seq;
            let log = bus.log();
            until("the fixture is past the events", || {
                log.cursor("shop", "fixture").expect("cursor").unwrap_or(0) >= head
            })
            .await;
            let count = log
                .get("shop", "fixture", "count")
                .expect("read the state")
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            assert_eq!(count.as_deref(), Some("2"));
            let counted: Vec<_> = log
                .read("shop", 0, 1000)
                .expect("read the log")
                .into_iter()
                .filter(|s| s.event.ty() == "out.counted")
                .map(|s| String::from_utf8_lossy(s.event.data()).into_owned())
                .collect();
            assert_eq!(counted, [r#"{"count":1}"#, r#"{"count":2}"#]);
            let dead = log.dead_letters("shop", "fixture").expect("dead letters");
            assert_eq!(dead.len(), 1);
            assert_eq!(dead[0].event.id(), "s-2");
            assert_eq!(host.stats().failures_of(FailureKind::HandlerRetryable), 2);
            bus.shutdown().await;
        })
    });
}

/// Runs `node --test [paths]` in `dir` and fails with its output when it
/// fails.
fn node_test(dir: &Path, paths: &[&str]) {
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(paths)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`node --test` in {} could not start (is Node.js >= 20.19 installed?): {e}",
                dir.display()
            )
        });
    assert!(
        output.status.success(),
        "`node --test` in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_sdk_example_fixture_and_template_pass_node_test() {
    let root = workspace();
    node_test(&root.join("guest-sdk/js"), &["test/"]);
    node_test(&root.join("plugins/examples/low-stock-alert-js"), &[]);
    node_test(&root.join("plugins/fixtures/js-behaviours"), &[]);
    // The template's own test runs on the project `plugbus new --lang js`
    // writes: host/plugbus/tests/new.rs.
}

#[test]
fn the_template_pins_the_tools_of_the_sdk() {
    let read = |path: &str| -> serde_json::Value {
        let path = workspace().join(path);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let sdk = read("guest-sdk/js/package.json");
    let template = read("guest-sdk/js/template/package.json.in");
    for key in ["devDependencies", "overrides", "engines"] {
        assert_eq!(
            template[key], sdk[key],
            "package.json.in's {key} differ from guest-sdk/js/package.json's"
        );
    }
    // `plugbus new` copies the SDK's package-lock.json itself.
}

/// A request the local receiver got: its method and path with query.
type Seen = (String, String);

/// A local HTTP server on a thread and runtime of its own (a delivery
/// blocks its thread while the component waits for the answer): it
/// records every request and answers `/redirect` with a 302 to another
/// host, anything else with 200 `ok`. Stops when dropped.
struct Receiver {
    addr: std::net::SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let record = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the receiver");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the receiver");
                bound
                    .send(listener.local_addr().expect("its address"))
                    .expect("the test waits for the address");
                let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                    let record = Arc::clone(&record);
                    async move {
                        let path = request.uri().path().to_owned();
                        record.lock().expect("not poisoned").push((
                            request.method().to_string(),
                            request
                                .uri()
                                .path_and_query()
                                .map_or(path.clone(), |p| p.to_string()),
                        ));
                        if path == "/redirect" {
                            (
                                axum::http::StatusCode::FOUND,
                                [(axum::http::header::LOCATION, "http://elsewhere.invalid/")],
                                "",
                            )
                                .into_response()
                        } else {
                            "ok".into_response()
                        }
                    }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the receiver serves");
            });
        });
        let addr = addr.recv().expect("the receiver's address");
        Self {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Delivers `js.<behaviour>` with `data` to the plugin directly and
/// returns the delivery and the JSON payload of the one event it emitted.
fn probe(
    host: &Host,
    plugin: &str,
    ty: &str,
    data: serde_json::Value,
) -> (plugbus::Delivery, Option<serde_json::Value>) {
    let plugin = host.plugin("shop", plugin).expect("loaded");
    let (delivery, emitted) = plugin
        .deliver(&event("shop", ty, "probe-1", data))
        .expect("deliverable");
    let payload = emitted
        .first()
        .map(|e| serde_json::from_slice(e.data()).expect("a JSON payload"));
    (delivery, payload)
}

// A plain test: `Plugin::deliver` blocks, as on the bus's blocking
// threads, which a tokio worker thread must not do.
#[test]
fn a_request_to_an_origin_the_manifest_does_not_allow_is_denied_in_the_handler() {
    let receiver = Receiver::start();
    let host = host(&fixture(""));
    let url = receiver.url("/hook");
    let (delivery, result) = probe(
        &host,
        "fixture",
        "js.http",
        serde_json::json!({"requests": [{"method": "POST", "url": url, "body": "x"}]}),
    );
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    let result = result.expect("probe.result");
    let first = &result["results"][0];
    assert_eq!(first["kind"], "denied", "{result}");
    assert_eq!(first["status"], serde_json::Value::Null, "{result}");
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP-request-denied") && e.contains(&url)),
        "{result}"
    );
    // Uncaught, a denial is permanent: a retry would be denied again.
    let (uncaught, _) = probe(
        &host,
        "fixture",
        "js.http-uncaught",
        serde_json::json!({"requests": [{"url": url}]}),
    );
    let failure = failure(&uncaught);
    assert_eq!(failure.kind, FailureKind::HandlerPermanent, "{failure:?}");
    assert!(
        failure.message.contains("HTTP-request-denied"),
        "{failure:?}"
    );
    assert!(receiver.seen().is_empty(), "{:?}", receiver.seen());
}

// A plain test: `Plugin::deliver` blocks, as on the bus's blocking
// threads, which a tokio worker thread must not do.
#[test]
fn a_secret_the_manifest_does_not_grant_reads_as_null() {
    let host = host(&fixture(""));
    let (delivery, result) = probe(
        &host,
        "fixture",
        "js.secret",
        serde_json::json!({"names": ["webhook_token", "missing"]}),
    );
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(
        result.expect("secret.result"),
        serde_json::json!({"secrets": {"webhook_token": null, "missing": null}})
    );
}
