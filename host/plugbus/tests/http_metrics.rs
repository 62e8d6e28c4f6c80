//! `/metrics` drops the series of a plugin once it is removed. A test
//! binary of its own: it installs the process's Prometheus recorder, as
//! `plugbus serve` does, which can be done once per process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugbus::api::{Api, ApiConfig, ApiLimits};
use plugbus_artifacts as artifacts;
use tower::ServiceExt as _;

const ACME_TOKEN: &str = "acme-secret-token";
const ADMIN_TOKEN: &str = "admin-secret-token";

fn call(
    api: &Arc<Api>,
    request: axum::http::Request<axum::body::Body>,
) -> impl Future<Output = (u16, String)> {
    let router = plugbus::api::router(api.clone());
    async move {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn get(path: &str, token: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .expect("a request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_of_a_removed_plugin_are_dropped() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the recorder");
    let plugins = tempfile::tempdir().expect("plugins");
    let data = tempfile::tempdir().expect("data");
    let acme = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&acme).expect("tenant directory");
    for name in ["audit", "second"] {
        std::fs::copy(artifacts::AUDIT_LOG, acme.join(format!("{name}.wasm"))).expect("copy");
    }
    let host = Arc::new(plugbus::Host::new(plugbus::HostConfig::default()).expect("a host"));
    host.load_dir(plugins.path()).expect("load");
    let log = plugbus::log::SqliteLog::open(data.path(), plugbus::log::SqliteLogConfig::default())
        .expect("the log");
    let bus = Arc::new(
        plugbus::durable::DurableBus::start(
            host,
            Arc::new(log),
            plugbus::durable::DurableConfig::default(),
        )
        .await
        .expect("the bus"),
    );
    let hash = plugbus::config::hash_token;
    let api = Api::with_limits(
        bus,
        ApiConfig {
            tenant_tokens: [("acme-pos".to_owned(), hash(ACME_TOKEN))].into(),
            admin_token: Some(hash(ADMIN_TOKEN)),
            plugins_dir: Some(plugins.path().to_owned()),
            ..ApiConfig::default()
        },
        ApiLimits::default(),
        Some(handle),
    );
    let event = r#"{"specversion":"1.0","id":"m-1","source":"/pos","type":"order.placed"}"#;
    let (status, body) = call(
        &api,
        axum::http::Request::post("/v1/events")
            .header("authorization", format!("Bearer {ACME_TOKEN}"))
            .header("content-type", "application/cloudevents+json")
            .body(axum::body::Body::from(event))
            .expect("a request"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let delivered = |text: &str, plugin: &str| {
        text.lines().any(|l| {
            l.starts_with("plugbus_deliveries_total{")
                && l.contains(&format!("plugin=\"{plugin}\""))
                && l.contains("outcome=\"handled\"")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = call(&api, get("/metrics", ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{text}");
        if delivered(&text, "audit") && delivered(&text, "second") {
            assert!(text.contains("plugbus_lag_events{tenant=\"acme-pos\",plugin=\"second\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "no deliveries: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(acme.join("second.wasm")).expect("remove");
    let (status, body) = call(
        &api,
        axum::http::Request::post("/v1/admin/reload")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(axum::body::Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = call(&api, get("/metrics", ADMIN_TOKEN)).await;
    assert!(
        !text.contains("plugin=\"second\""),
        "a removed plugin's series are gone: {text}"
    );
    assert!(delivered(&text, "audit"), "the others stay: {text}");
    assert!(text.contains("plugbus_ingested_events_total{tenant=\"acme-pos\"}"));
}
