//! Outbound HTTP from plugins (`wasi:http/outgoing-handler`): the
//! `http-probe` fixture sends the requests its event lists to servers the
//! test starts on 127.0.0.1, and the tests check what arrived and what the
//! plugin was told. Every refusal of the issue is a test of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugbus::{FailureKind, HostConfig, LoadError, OutboundConfig, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_with, kind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const TENANT: &str = "acme";
const PLUGIN: &str = "probe";

/// What a test server does with each connection.
#[derive(Clone)]
enum Behaviour {
    /// Reads the request and answers 200 with this body.
    Answer(&'static str),
    /// Reads the request and answers 302 to this location.
    Redirect(String),
    /// Reads the request and answers 200 with this many bytes, without a
    /// `Content-Length` (the body ends when the connection closes).
    Stream(usize),
    /// Reads the request, sends headers promising 100 bytes, and stalls.
    HeadersThenStall,
    /// Reads the request and never answers.
    NeverAnswer,
    /// Accepts the connection and never reads from it.
    NeverRead,
}

/// A server on 127.0.0.1 that records the head of every request it reads.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, behaviour.clone(), seen.clone()));
            }
        });
        Self { port, requests }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<String>>>) {
    if let Behaviour::NeverRead = behaviour {
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer.len() - head_end;
    while body < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body += n,
        }
    }
    seen.lock().expect("lock").push(head);
    let answer = match behaviour {
        Behaviour::Answer(text) => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )
        .into_bytes(),
        Behaviour::Redirect(location) => format!(
            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
        Behaviour::Stream(n) => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
            bytes.resize(bytes.len() + n, b'x');
            bytes
        }
        Behaviour::HeadersThenStall => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                .await;
            tokio::time::sleep(Duration::from_secs(600)).await;
            return;
        }
        Behaviour::NeverAnswer | Behaviour::NeverRead => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            return;
        }
    };
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

/// The outbound policy of the tests: 127.0.0.1 allowed (the servers are
/// local), and tenant `acme` allowed every origin in `ceiling`.
fn config(
    ceiling: &[String],
    private: bool,
    tweak: impl FnOnce(&mut OutboundConfig),
) -> HostConfig {
    let mut outbound = OutboundConfig {
        allow_private: if private {
            vec!["127.0.0.1/32".parse().expect("cidr")]
        } else {
            Vec::new()
        },
        tenant_ceilings: HashMap::from([(
            TENANT.to_owned(),
            ceiling.iter().map(|o| o.parse().expect("origin")).collect(),
        )]),
        ..OutboundConfig::default()
    };
    tweak(&mut outbound);
    HostConfig {
        outbound,
        ..HostConfig::default()
    }
}

fn manifest(allow: &[String], timeout_ms: u64) -> String {
    let allow: Vec<String> = allow.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "subscribe = [\"probe.run\"]\n[limits]\ntimeout_ms = {timeout_ms}\n[http]\nallow = [{}]\n",
        allow.join(", ")
    )
}

/// A host with the probe loaded under `manifest`.
fn probe_host(config: HostConfig, manifest: &str) -> (plugbus::Host, PluginsDir) {
    let dir = PluginsDir::new();
    dir.add(
        TENANT,
        PLUGIN,
        artifacts::FIXTURE_HTTP_PROBE,
        Some(manifest),
    );
    let (host, report) = host_with(config, &dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (host, dir)
}

/// Publishes one `probe.run` event and returns its delivery and, when it
/// was handled, the probe's results.
async fn run(host: &plugbus::Host, id: &str, data: Value) -> (plugbus::Delivery, Vec<Value>) {
    let report = host
        .publish(event(TENANT, "probe.run", id, data))
        .await
        .expect("a valid event");
    let delivery = report
        .deliveries
        .into_iter()
        .find(|d| d.plugin == PLUGIN)
        .expect("delivered to the probe");
    let results = host
        .state_store()
        .get(TENANT, PLUGIN, &format!("result:{id}"))
        .expect("read state")
        .map(|bytes| {
            let value: Value = serde_json::from_slice(&bytes).expect("JSON results");
            value["results"].as_array().cloned().unwrap_or_default()
        })
        .unwrap_or_default();
    (delivery, results)
}

fn get(url: String) -> Value {
    json!({ "method": "GET", "url": url })
}

/// The request's error: the wasi:http `error-code`'s name (its debug text
/// without the type's), or the stream error's text.
fn error_of(result: &Value) -> String {
    let error = result["error"].as_str().unwrap_or_default();
    error
        .strip_prefix("ErrorCode::")
        .unwrap_or(error)
        .to_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The fixture's test: an allowed request arrives, with an idempotency key
/// and the delivery's traceparent, and its answer reaches the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn http_probe() {
    let server = Server::start(Behaviour::Answer("pong")).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |_| {}),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let ev = event(
        TENANT,
        "probe.run",
        "evt-ok",
        json!({
            "requests": [{
                "method": "POST",
                "url": format!("{origin}/hook?x=1"),
                "body": "hello",
                "headers": [["content-type", "text/plain"], ["traceparent", "forged"]],
            }],
            "read_body": true,
        }),
    )
    .to_builder()
    .extension("traceparent", traceparent.to_owned())
    .build()
    .expect("a valid event");
    let report = host.publish(ev).await.expect("a valid event");
    let delivery = &report.deliveries[0];
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    let results: Value = serde_json::from_slice(
        &host
            .state_store()
            .get(TENANT, PLUGIN, "result:evt-ok")
            .expect("state")
            .expect("the probe's results"),
    )
    .expect("JSON");
    let result = &results["results"][0];
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body"], "pong", "{result}");
    assert_eq!(result["error"], Value::Null, "{result}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let head = &requests[0];
    assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
    let key = header(head, "idempotency-key").expect("an idempotency key");
    assert_eq!(key.len(), 64, "{head}");
    // The delivery's trace: the event's trace id; the guest's is replaced.
    let sent = header(head, "traceparent").expect("a traceparent");
    assert!(sent.contains("0af7651916cd43dd8448eb211c80319c"), "{head}");
    assert!(!head.contains("forged"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_sends_the_same_idempotency_key() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |_| {}),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let data = json!({
        "requests": [get(format!("{origin}/a")), get(format!("{origin}/b"))],
        "fail": "try again",
    });
    let plugin = host.plugin(TENANT, PLUGIN).expect("loaded");
    let ev = event(TENANT, "probe.run", "evt-retry", data);
    // Attempt 1 and attempt 2 of the same event.
    for _ in 0..2 {
        let delivery = deliver(&plugin, &ev).await;
        assert_eq!(
            kind(&delivery),
            Some(FailureKind::HandlerRetryable),
            "{delivery:#?}"
        );
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let keys: Vec<&str> = requests
        .iter()
        .map(|h| header(h, "idempotency-key").expect("a key"))
        .collect();
    assert_eq!(keys[0], keys[2], "request 0 of both attempts");
    assert_eq!(keys[1], keys[3], "request 1 of both attempts");
    assert_ne!(keys[0], keys[1], "two requests of one delivery");
    // Another event gets other keys.
    let other = event(
        TENANT,
        "probe.run",
        "evt-other",
        json!({"requests": [get(format!("{origin}/a"))]}),
    );
    deliver(&plugin, &other).await;
    let requests = server.requests();
    assert_ne!(header(&requests[4], "idempotency-key"), Some(keys[0]));
}

/// Delivers `event` to `plugin` directly, as the bus does on every attempt.
async fn deliver(plugin: &Arc<plugbus::Plugin>, event: &plugbus::Event) -> plugbus::Delivery {
    let (plugin, event) = (plugin.clone(), event.clone());
    tokio::task::spawn_blocking(move || plugin.deliver(&event).expect("same tenant").0)
        .await
        .expect("the delivery's thread")
}

/// Runs one request the plugin's allow list does not allow and checks it
/// failed with `HttpRequestDenied` and reached no server.
async fn assert_denied(allow: &str, url: String, server: &Server) {
    let allow = vec![allow.to_owned()];
    let (host, _dir) = probe_host(config(&allow, true, |_| {}), &manifest(&allow, 5000));
    let (delivery, results) = run(&host, "evt-denied", json!({"requests": [get(url)]})).await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(error_of(&results[0]), "HttpRequestDenied", "{results:?}");
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_allowed_is_denied() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    // "localhost" resolves to the server, but only 127.0.0.1 is allowed.
    assert_denied(
        &server.origin(),
        format!("http://localhost:{}/", server.port),
        &server,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_not_allowed_is_denied() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    let other = Server::start(Behaviour::Answer("ok")).await;
    assert_denied(&other.origin(), format!("{}/", server.origin()), &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_not_allowed_is_denied() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    assert_denied(
        &format!("https://127.0.0.1:{}", server.port),
        format!("{}/", server.origin()),
        &server,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    let elsewhere = Server::start(Behaviour::Answer("secret")).await;
    let server = Server::start(Behaviour::Redirect(format!("{}/x", elsewhere.origin()))).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |_| {}),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let (delivery, results) = run(
        &host,
        "evt-redirect",
        json!({"requests": [get(format!("{origin}/"))], "read_body": true}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(results[0]["status"], 302, "{results:?}");
    assert_eq!(server.requests().len(), 1);
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    let allow = vec![format!("http://localhost:{}", server.port)];
    let url = format!("http://localhost:{}/", server.port);
    // Without allow_private: refused after resolution.
    let (host, _dir) = probe_host(config(&allow, false, |_| {}), &manifest(&allow, 5000));
    let (delivery, results) = run(
        &host,
        "evt-private",
        json!({"requests": [get(url.clone())]}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(
        error_of(&results[0]),
        "DestinationIpProhibited",
        "{results:?}"
    );
    assert!(server.requests().is_empty());
    // With 127.0.0.1/32 allowed: it arrives (over IPv4; ::1 stays refused).
    let (host, _dir) = probe_host(config(&allow, true, |_| {}), &manifest(&allow, 5000));
    let (delivery, results) = run(&host, "evt-allowed", json!({"requests": [get(url)]})).await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(results[0]["status"], 200, "{results:?}");
    assert_eq!(server.requests().len(), 1);

    // A metadata address written as a literal, allowed by the manifest and
    // the ceiling: still refused, before any connection.
    let metadata = vec!["http://169.254.169.254".to_owned()];
    let (host, _dir) = probe_host(config(&metadata, true, |_| {}), &manifest(&metadata, 5000));
    let (delivery, results) = run(
        &host,
        "evt-metadata",
        json!({"requests": [get("http://169.254.169.254/latest/meta-data/".to_owned())]}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(
        error_of(&results[0]),
        "DestinationIpProhibited",
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_response_is_cut() {
    let server = Server::start(Behaviour::Stream(64 * 1024)).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |o| {
            // One byte less than the server sends: crossed by one.
            o.max_response_body_bytes = 64 * 1024 - 1
        }),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let (delivery, results) = run(
        &host,
        "evt-big",
        json!({"requests": [get(format!("{origin}/"))], "read_body": true}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    // Cut mid-body: the guest's read of the body stream fails with the
    // error code's text.
    let error = error_of(&results[0]);
    assert!(
        error.contains("HttpResponseBodySize") || error.contains("response body size exceeds"),
        "{results:?}"
    );
    assert!(
        results[0]["body_len"].as_u64().unwrap_or(u64::MAX) < 64 * 1024,
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_body_is_refused() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |o| {
            o.max_request_body_bytes = 1000
        }),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    // One byte over the limit.
    let body = "x".repeat(1001);
    let (delivery, results) = run(
        &host,
        "evt-big-request",
        json!({"requests": [{"method": "POST", "url": format!("{origin}/"), "body": body}]}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert!(
        error_of(&results[0]).contains("HttpRequestBodySize"),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_hits_the_first_byte_timeout() {
    let server = Server::start(Behaviour::NeverAnswer).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |o| {
            o.first_byte_timeout = Duration::from_millis(200);
        }),
        &manifest(std::slice::from_ref(&origin), 20_000),
    );
    let (delivery, results) = run(
        &host,
        "evt-slow",
        json!({"requests": [get(format!("{origin}/"))]}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(
        error_of(&results[0]),
        "ConnectionReadTimeout",
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_hit_the_limit() {
    let server = Server::start(Behaviour::Answer("ok")).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |o| {
            o.max_requests_per_delivery = 2
        }),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let requests: Vec<Value> = (0..3).map(|i| get(format!("{origin}/{i}"))).collect();
    let (delivery, results) = run(&host, "evt-many", json!({"requests": requests})).await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[1]["status"], 200);
    assert_eq!(
        error_of(&results[2]),
        "ConnectionLimitReached",
        "{results:?}"
    );
    assert_eq!(server.requests().len(), 2);
    // The count starts again with the next delivery.
    let (_, results) = run(
        &host,
        "evt-many-2",
        json!({"requests": [get(format!("{origin}/again"))]}),
    )
    .await;
    assert_eq!(results[0]["status"], 200, "{results:?}");
}

/// Each of these servers would hold a request for ten minutes; the
/// delivery's 500 ms deadline ends each one, and the delivery fails with
/// a timeout instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_does_not_hold_the_delivery() {
    for (name, behaviour, data) in [
        ("never-answers", Behaviour::NeverAnswer, json!({})),
        (
            "stalls-in-body",
            Behaviour::HeadersThenStall,
            json!({"read_body": true}),
        ),
        // More than the kernel's socket buffers and hyper's can take in
        // (a few MiB on loopback), under a body limit above it, so that
        // only the deadline ends the write.
        (
            "never-reads",
            Behaviour::NeverRead,
            json!({"body": "x".repeat(1024), "repeat": 24 * 1024}),
        ),
        // The body written before the request is handed over: nobody
        // reads it, and the guest blocks in blocking-write-and-flush.
        (
            "body-before-handle",
            Behaviour::NeverAnswer,
            json!({"body": "x".repeat(64 * 1024), "body_first": true}),
        ),
    ] {
        let server = Server::start(behaviour).await;
        let origin = server.origin();
        let (host, _dir) = probe_host(
            config(std::slice::from_ref(&origin), true, |c| {
                c.max_request_body_bytes = 64 * 1024 * 1024;
            }),
            &manifest(std::slice::from_ref(&origin), 500),
        );
        let mut request = json!({"method": "POST", "url": format!("{origin}/")});
        if let Some(body) = data.get("body") {
            request["body"] = body.clone();
        }
        for key in ["body_first", "repeat"] {
            if let Some(value) = data.get(key) {
                request[key] = value.clone();
            }
        }
        let read_body = data.get("read_body").is_some();
        let (delivery, _) = run(
            &host,
            &format!("evt-{name}"),
            json!({"requests": [request], "read_body": read_body}),
        )
        .await;
        assert_eq!(
            kind(&delivery),
            Some(FailureKind::Timeout),
            "{name}: {delivery:#?}"
        );
    }
}

#[test]
fn a_manifest_outside_the_tenant_ceiling_fails_to_load() {
    let allowed = vec!["https://*.example.com".to_owned()];
    let dir = PluginsDir::new();
    dir.add(
        TENANT,
        PLUGIN,
        artifacts::FIXTURE_HTTP_PROBE,
        Some(&manifest(
            &[
                "https://api.example.com".into(),
                "https://evil.example.net".into(),
            ],
            1000,
        )),
    );
    let (host, report) = host_with(config(&allowed, false, |_| {}), &dir);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let error = &report.errors[0];
    assert!(
        matches!(error, LoadError::OutboundCeiling { entry, .. } if entry == "https://evil.example.net"),
        "{error}"
    );
    assert!(
        error.to_string().contains("tenants.acme.outbound.allow"),
        "{error}"
    );
    assert!(host.plugin(TENANT, PLUGIN).is_none());
    // Another tenant, without a ceiling, may allow nothing at all.
    let dir = PluginsDir::new();
    dir.add(
        "other",
        PLUGIN,
        artifacts::FIXTURE_HTTP_PROBE,
        Some(&manifest(&["https://api.example.com".into()], 1000)),
    );
    let (_host, report) = host_with(config(&allowed, false, |_| {}), &dir);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_per_tenant_plugin_and_result() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The only recorder of this test binary.
    metrics::set_global_recorder(recorder).expect("no other recorder");
    let server = Server::start(Behaviour::Answer("ok")).await;
    let origin = server.origin();
    let (host, _dir) = probe_host(
        config(std::slice::from_ref(&origin), true, |_| {}),
        &manifest(std::slice::from_ref(&origin), 5000),
    );
    let (delivery, _) = run(
        &host,
        "evt-metrics",
        json!({"requests": [get(format!("{origin}/")), get("http://not-allowed.example.com/".into())]}),
    )
    .await;
    assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
    let text = handle.render();
    assert!(
        text.contains(
            r#"plugbus_outbound_requests_total{tenant="acme",plugin="probe",result="ok"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"plugbus_outbound_requests_total{tenant="acme",plugin="probe",result="denied"}"#
        ),
        "{text}"
    );
    assert!(text.contains("plugbus_outbound_request_seconds"), "{text}");
}

/// The `webhook-notify` example in the host: it posts the alert to its
/// allowed `webhook_url` with the secret its manifest grants as bearer
/// token, and the request carries the host's idempotency key; without the
/// secret it fails permanently, naming it, and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_example_posts_with_its_secret() {
    use plugbus::secrets::{SecretName, SecretValue, Secrets, TenantSecrets};
    let server = Server::start(Behaviour::Answer("ok")).await;
    let origin = server.origin();
    let manifest = format!(
        "subscribe = [\"inventory.low_stock\"]\n[config]\nwebhook_url = \"{origin}/alerts\"\n\
         [http]\nallow = [{origin:?}]\n[secrets]\ngrant = [\"webhook_token\"]\n"
    );
    let low = |id: &str| {
        event(
            TENANT,
            "inventory.low_stock",
            id,
            json!({"sku": "sku-1", "quantity": 2, "threshold": 10}),
        )
    };
    for with_secret in [true, false] {
        let mut config = config(std::slice::from_ref(&origin), true, |_| {});
        if with_secret {
            let mut secrets = Secrets::new();
            secrets.insert(
                SecretName::parse("webhook_token").expect("a name"),
                SecretValue::new("t0k-webhook".to_owned()).expect("a value"),
            );
            let mut tenants = TenantSecrets::new();
            tenants.insert(TENANT, secrets);
            config.secrets = tenants;
        }
        let dir = PluginsDir::new();
        dir.add(
            TENANT,
            "webhook",
            artifacts::WEBHOOK_NOTIFY,
            Some(&manifest),
        );
        let (host, report) = host_with(config, &dir);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let id = if with_secret {
            "evt-hook"
        } else {
            "evt-nohook"
        };
        let report = host.publish(low(id)).await.expect("a valid event");
        let delivery = &report.deliveries[0];
        if with_secret {
            assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
        } else {
            assert_eq!(
                kind(delivery),
                Some(FailureKind::HandlerPermanent),
                "{delivery:#?}"
            );
            let failure = format!("{:?}", delivery.outcome);
            assert!(failure.contains("webhook_token"), "{failure}");
        }
    }
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        1,
        "only the plugin with its secret posts: {requests:?}"
    );
    let head = &requests[0];
    assert!(head.starts_with("POST /alerts HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        header(head, "authorization"),
        Some("Bearer t0k-webhook"),
        "{head}"
    );
    assert!(
        header(head, "idempotency-key").is_some_and(|k| k.len() == 64),
        "{head}"
    );
}
