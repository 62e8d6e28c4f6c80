//! `/metrics`: only the series of what has happened, of the plugins and
//! tenants that exist, sorted, every family with its `# HELP` and
//! `# TYPE`, and every metric the host can export documented in README.md's
//! metrics table. A test binary of its own: it installs the process's
//! Prometheus recorder, as `plugbus serve` does, which can be done once per
//! process; the tests share it, each with tenants of its own (a scrape
//! shows only the series of its host's tenants and plugins).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use plugbus::api::{Api, ApiConfig, ApiLimits, METRICS};
use plugbus_artifacts as artifacts;
use tower::ServiceExt as _;

const ADMIN_TOKEN: &str = "admin-secret-token";

/// The process's recorder, installed by the first test that asks, with
/// the histogram buckets `plugbus serve` sets.
fn recorder() -> PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[0.001, 0.1, 1.0])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("plugbus_fuel_consumed".into()),
                        &[1e3, 1e6, 1e9],
                    )
                })
                .expect("the buckets")
                .install_recorder()
                .expect("the recorder")
        })
        .clone()
}

/// An API over a durable bus, with `tenant`'s `plugins` (copies of
/// audit-log) loaded.
struct Setup {
    api: Arc<Api>,
    tenant_dir: std::path::PathBuf,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Setup {
    async fn new(tenant: &str, token: &str, plugins: &[&str]) -> Self {
        let handle = recorder();
        let dir = tempfile::tempdir().expect("plugins");
        let data = tempfile::tempdir().expect("data");
        let tenant_dir = dir.path().join(tenant);
        std::fs::create_dir_all(&tenant_dir).expect("tenant directory");
        for name in plugins {
            std::fs::copy(
                artifacts::AUDIT_LOG,
                tenant_dir.join(format!("{name}.wasm")),
            )
            .expect("copy");
        }
        let host = Arc::new(plugbus::Host::new(plugbus::HostConfig::default()).expect("a host"));
        host.load_dir(dir.path()).expect("load");
        let log =
            plugbus::log::SqliteLog::open(data.path(), plugbus::log::SqliteLogConfig::default())
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
                tenant_tokens: [(tenant.to_owned(), hash(token))].into(),
                admin_token: Some(hash(ADMIN_TOKEN)),
                plugins_dir: Some(dir.path().to_owned()),
                ..ApiConfig::default()
            },
            ApiLimits::default(),
            Some(handle),
        );
        Self {
            api,
            tenant_dir,
            _plugins: dir,
            _data: data,
        }
    }

    async fn call(&self, request: axum::http::Request<axum::body::Body>) -> (u16, String) {
        let response = plugbus::api::router(self.api.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `/metrics`, checked to be well formed (see [`check_exposition`]).
    async fn scrape(&self) -> String {
        let (status, text) = self
            .call(
                axum::http::Request::get("/metrics")
                    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                    .body(axum::body::Body::empty())
                    .expect("a request"),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        check_exposition(&text);
        text
    }

    async fn publish(&self, token: &str, id: &str) {
        let event =
            format!(r#"{{"specversion":"1.0","id":"{id}","source":"/pos","type":"order.placed"}}"#);
        let (status, body) = self
            .call(
                axum::http::Request::post("/v1/events")
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/cloudevents+json")
                    .body(axum::body::Body::from(event))
                    .expect("a request"),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    /// Scrapes until `done` holds of the text (the deliveries run in the
    /// background); the text then.
    async fn scrape_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.scrape().await;
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "never {what}: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The labels of a sample line, in order, without a histogram's `le`.
fn series_labels(line: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = line.split_once('{') else {
        return Vec::new();
    };
    let inner = &rest[..rest.rfind('}').expect("closed labels")];
    inner
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once("=\"").expect("name=\"value\"");
            (name.to_owned(), value.trim_end_matches('"').to_owned())
        })
        .filter(|(name, _)| name != "le")
        .collect()
}

/// Checks the exposition: every family has `# HELP` then `# TYPE`, and is
/// a metric of [`METRICS`] of that type; families come sorted by name;
/// a family's series come sorted by labels, each series' lines together.
fn check_exposition(text: &str) {
    let documented: BTreeMap<&str, &str> =
        METRICS.iter().map(|m| (m.name, m.kind.as_str())).collect();
    let mut families = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(help) = lines.next() {
        let name = help
            .strip_prefix("# HELP ")
            .and_then(|h| h.split(' ').next())
            .unwrap_or_else(|| panic!("a family starts with # HELP, not {help:?}: {text}"));
        let kind = lines.next().unwrap_or_default();
        let expected = documented
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in METRICS (nor README.md): {text}"));
        assert_eq!(kind, format!("# TYPE {name} {expected}"), "{text}");
        let mut series: Vec<Vec<(String, String)>> = Vec::new();
        while let Some(line) = lines.next_if(|l| !l.is_empty()) {
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            let suffix = sample.strip_prefix(name).unwrap_or("?");
            assert!(
                matches!(suffix, "" | "_bucket" | "_sum" | "_count"),
                "{line} in family {name}: {text}"
            );
            let labels = series_labels(line);
            if series.last() != Some(&labels) {
                assert!(
                    series.last().is_none_or(|last| *last < labels),
                    "{name}'s series are sorted by labels, each together: {text}"
                );
                series.push(labels);
            }
        }
        assert!(!series.is_empty(), "{name} has no sample: {text}");
        lines.next_if(|l| l.is_empty());
        families.push(name);
    }
    let sorted: Vec<&str> = families
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(families, sorted, "families sorted by name, each once");
}

/// The sample lines (not comments) of `text`.
fn samples(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn delivered(text: &str, tenant: &str, plugin: &str) -> bool {
    samples(text).any(|l| {
        l.starts_with(&format!(
            "plugbus_deliveries_total{{tenant=\"{tenant}\",plugin=\"{plugin}\",outcome=\"handled\""
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_has_series_from_its_first_delivery() {
    const TENANT: &str = "fresh-co";
    const TOKEN: &str = "fresh-secret-token";
    let setup = Setup::new(TENANT, TOKEN, &["audit"]).await;
    let fresh = setup.scrape().await;
    let labelled: Vec<&str> = samples(&fresh)
        .filter(|l| l.contains("tenant=\"") || l.contains("plugin=\""))
        .collect();
    assert!(
        labelled.is_empty(),
        "no tenant or plugin series before a delivery: {labelled:#?}"
    );
    for line in [
        "plugbus_http_connections_refused_total 0",
        "plugbus_log_write_errors_total 0",
        "plugbus_log_writable 1",
    ] {
        assert!(samples(&fresh).any(|l| l == line), "{line} in {fresh}");
    }

    setup.publish(TOKEN, "m-1").await;
    let text = setup
        .scrape_until("delivered", |t| delivered(t, TENANT, "audit"))
        .await;
    let labels = format!("{{tenant=\"{TENANT}\",plugin=\"audit\"}}");
    for line in [
        format!(
            "plugbus_deliveries_total{{tenant=\"{TENANT}\",plugin=\"audit\",outcome=\"handled\",kind=\"\"}} 1"
        ),
        format!("plugbus_handle_seconds_count{labels} 1"),
        format!("plugbus_fuel_consumed_count{labels} 1"),
        format!("plugbus_ingested_events_total{{tenant=\"{TENANT}\"}} 1"),
    ] {
        assert!(samples(&text).any(|l| l == line), "{line} in {text}");
    }
    // The consumer's reads of the log are counted, answered by the tail
    // cache or by SQLite (which one depends on timing).
    let tail_reads: f64 = samples(&text)
        .filter(|l| l.starts_with("plugbus_log_tail_reads_total{result="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(tail_reads >= 1.0, "tail reads counted in {text}");
    // Only what happened: no failure kind, retry or dead letter.
    for absent in [
        "outcome=\"failed\"",
        "plugbus_retries_total",
        "plugbus_dead_letter",
        "plugbus_instances_recycled_total",
    ] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_of_a_removed_plugin_are_dropped() {
    const TENANT: &str = "acme-pos";
    const TOKEN: &str = "acme-secret-token";
    let setup = Setup::new(TENANT, TOKEN, &["audit", "second"]).await;
    setup.publish(TOKEN, "m-1").await;
    setup
        .scrape_until("delivered to both", |t| {
            delivered(t, TENANT, "audit") && delivered(t, TENANT, "second")
        })
        .await;
    std::fs::remove_file(setup.tenant_dir.join("second.wasm")).expect("remove");
    let (status, body) = setup
        .call(
            axum::http::Request::post("/v1/admin/reload")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(axum::body::Body::empty())
                .expect("a request"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = setup.scrape().await;
    assert!(
        !text.contains("plugin=\"second\""),
        "a removed plugin's series are gone: {text}"
    );
    assert!(delivered(&text, TENANT, "audit"), "the others stay: {text}");
    assert!(text.contains("plugbus_ingested_events_total{tenant=\"acme-pos\"}"));
}

/// The rows of README.md's metrics table: name → (type, labels).
fn readme_table() -> BTreeMap<String, (String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split_once("\n### Metrics\n")
        .expect("a metrics section")
        .1;
    let section = section.split("\n#").next().unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let labels = match cells[3] {
            "—" | "" => Vec::new(),
            labels => labels
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .collect(),
        };
        let row = (cells[2].to_owned(), labels);
        assert!(rows.insert(name.clone(), row).is_none(), "{name} twice");
    }
    rows
}

/// The metric names the host's sources use: every string literal
/// `"plugbus_…"` in host/*/src (all of them name metrics), and the name of
/// every `metrics::counter!`, `gauge!` and `histogram!` given as a literal;
/// not the list in monitoring.rs that this test checks against.
fn names_in_sources() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                let text = match text.split_once("pub const METRICS") {
                    Some((before, _)) => before.to_owned(),
                    None => text,
                };
                for (at, _) in text.match_indices("\"plugbus_") {
                    let name: String = text[at + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
                for call in [
                    "metrics::counter!(",
                    "metrics::gauge!(",
                    "metrics::histogram!(",
                ] {
                    for (at, _) in text.match_indices(call) {
                        let rest = text[at + call.len()..].trim_start();
                        if let Some(literal) = rest.strip_prefix('"') {
                            let name = literal.split('"').next().unwrap_or_default();
                            names.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    for krate in std::fs::read_dir(&host).expect("host/") {
        let src = krate.expect("a crate").path().join("src");
        if src.is_dir() {
            walk(&src, &mut names);
        }
    }
    names
}

/// Every metric the host can export is in README.md's table, with its
/// type and labels, and the table holds no other: the sources' metric
/// names, `METRICS` (the `# HELP` texts) and the table are the same set.
#[test]
fn every_metric_is_documented_in_the_readme() {
    let table = readme_table();
    let listed: BTreeMap<String, (String, Vec<String>)> = METRICS
        .iter()
        .map(|m| {
            let labels = m.labels.iter().map(|l| (*l).to_owned()).collect();
            (m.name.to_owned(), (m.kind.as_str().to_owned(), labels))
        })
        .collect();
    assert_eq!(table, listed, "README.md's metrics table and METRICS");
    let in_sources = names_in_sources();
    let documented: BTreeSet<String> = table.into_keys().collect();
    assert_eq!(
        in_sources.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "metrics the sources record and README.md does not document"
    );
    assert_eq!(
        documented.difference(&in_sources).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "metrics README.md documents and no source records"
    );
    assert!(METRICS.iter().all(|m| !m.help.is_empty()));
}
