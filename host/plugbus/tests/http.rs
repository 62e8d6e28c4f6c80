//! HTTP ingest, tenant isolation, the admin API and /metrics of `plugbus
//! serve`, driven by an independent client (curl) and by raw TCP where a
//! test needs control over the bytes on the wire.

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use plugbus_artifacts as artifacts;
use support::{bearer, samples, value_of};

mod support;

const ACME_TOKEN: &str = "acme-secret-token";
const GLOBEX_TOKEN: &str = "globex-secret-token";
const ADMIN_TOKEN: &str = "admin-secret-token";
/// The body limit the test host is configured with.
const MAX_BODY: usize = 64 * 1024;

/// A running `plugbus serve` with HTTP on a free port
/// ([`support::Server`]), and the directories it uses.
struct Server {
    inner: support::Server,
    _plugins: tempfile::TempDir,
    data: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Server {
    type Target = support::Server;

    fn deref(&self) -> &support::Server {
        &self.inner
    }
}

fn plugins() -> tempfile::TempDir {
    let plugins = tempfile::tempdir().expect("plugins directory");
    for tenant in ["acme-pos", "globex-retail"] {
        let dir = plugins.path().join(tenant);
        std::fs::create_dir_all(&dir).expect("tenant directory");
        std::fs::copy(artifacts::AUDIT_LOG, dir.join("audit.wasm")).expect("copy");
    }
    plugins
}

/// [`plugins`], and the `mixed` fixture for acme-pos on `mix.*`, with
/// one attempt per event.
fn plugins_with_mixed() -> tempfile::TempDir {
    let dir = plugins();
    let acme_dir = dir.path().join("acme-pos");
    std::fs::copy(artifacts::FIXTURE_MIXED, acme_dir.join("mixed.wasm")).expect("copy");
    std::fs::write(
        acme_dir.join("mixed.toml"),
        "subscribe = [\"mix.*\"]\n[retry]\nmax_attempts = 1\n",
    )
    .expect("manifest");
    dir
}

impl Server {
    fn start(plugins: tempfile::TempDir, data: tempfile::TempDir) -> Self {
        Self::start_with(plugins, data, "")
    }

    /// Starts with `extra` appended to the configuration file.
    fn start_with(plugins: tempfile::TempDir, data: tempfile::TempDir, extra: &str) -> Self {
        let hash = plugbus::config::hash_token;
        let config = data.path().join("plugbus.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\n\
                 plugins_dir = \"{}\"\n\
                 data_dir = \"{}\"\n\
                 [http]\nmax_body_bytes = {MAX_BODY}\nmax_batch_events = 5\n\
                 [admin]\ntoken_sha256 = \"{}\"\n\
                 [tenants.acme-pos]\ntoken_sha256 = \"{}\"\n\
                 [tenants.globex-retail]\ntoken_sha256 = \"{}\"\n\
                 {extra}",
                plugins.path().display(),
                data.path().join("data").display(),
                hash(ADMIN_TOKEN),
                hash(ACME_TOKEN),
                hash(GLOBEX_TOKEN),
            ),
        )
        .expect("write the configuration");
        Self {
            inner: support::Server::start(&config),
            _plugins: plugins,
            data: Some(data),
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let data = self.data.take().expect("the data directory");
        (self.inner.terminate(), data)
    }
}

fn structured(id: &str, extra: &str) -> String {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"order.placed"{extra}}}"#)
}

#[test]
fn each_content_mode_is_ingested_and_delivered() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let acme = bearer(ACME_TOKEN);

    // Binary mode: attributes in ce- headers, percent-encoded; the body is
    // the data and Content-Type its media type.
    let (status, body) = server.curl(
        "/v1/events",
        &[
            "-H",
            &acme,
            "-H",
            "ce-specversion: 1.0",
            "-H",
            "ce-id: bin-1",
            "-H",
            "ce-source: /pos/1",
            "-H",
            "ce-type: order.placed",
            "-H",
            "ce-subject: caf%C3%A9%20cr%C3%A8me",
            "-H",
            "ce-partitionkey: order-7",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"{"total":12}"#,
        ],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["id"], "bin-1");
    assert_eq!(body["accepted"][0]["duplicate"], false);
    let first = body["accepted"][0]["seq"].as_u64().expect("seq");

    // Structured mode.
    let (status, body) = server.curl(
        "/v1/events",
        &[
            "-H",
            &acme,
            "-H",
            "Content-Type: application/cloudevents+json; charset=utf-8",
            "--data-binary",
            &structured("str-1", r#","data":{"total":3}"#),
        ],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["seq"].as_u64(), Some(first + 1));

    // Batch mode: two events, acknowledged together.
    let batch = format!(
        "[{},{}]",
        structured("bat-1", ""),
        structured(
            "bat-2",
            r#","data_base64":"aGVsbG8=","datacontenttype":"text/plain""#
        )
    );
    let (status, body) = server.post(ACME_TOKEN, "application/cloudevents-batch+json", &batch);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"].as_array().map(Vec::len), Some(2));

    // The same event again: stored once, and the answer says so.
    let (status, body) = server.post(
        ACME_TOKEN,
        "application/cloudevents+json",
        &structured("str-1", ""),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["duplicate"], true);
    assert_eq!(body["accepted"][0]["seq"].as_u64(), Some(first + 1));

    let deliveries = server.deliveries_of(&["bin-1", "str-1", "bat-1", "bat-2"]);
    assert!(
        deliveries
            .iter()
            .all(|d| d["tenant"] == "acme-pos" && d["outcome"] == "handled"),
        "{deliveries:#?}"
    );
    // The percent-encoded subject arrived decoded (audit-log logs it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("subject=café crème") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = server.curl("/healthz", &[]);
    assert_eq!(status, 200);
    let (status, _) = server.curl("/readyz", &[]);
    assert_eq!(status, 200);
    let (status, _) = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}");
}

#[test]
fn bad_requests_are_refused_by_name_and_store_nothing() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let acme = bearer(ACME_TOKEN);
    let post = |content_type: &str, body: &str, auth: &str| {
        server.curl(
            "/v1/events",
            &[
                "-H",
                auth,
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                body,
            ],
        )
    };
    let ce = "application/cloudevents+json";
    let check = |(status, body): (u16, serde_json::Value), expected: u16, attribute: &str| {
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["error"], "invalid_event", "{body}");
        assert_eq!(body["attribute"], attribute, "{body}");
    };
    check(
        post(ce, &structured("e-1", r#","time":"yesterday""#), &acme),
        400,
        "time",
    );
    check(
        post(
            ce,
            &structured("e-1", r#","dataschema":"schemas/o.json""#),
            &acme,
        ),
        400,
        "dataschema",
    );
    check(
        post(ce, &structured("e-1", r#","Bad_Name":"x""#), &acme),
        400,
        "Bad_Name",
    );
    check(
        post(ce, &structured("e-1", r#","subject":"a\u0007b""#), &acme),
        400,
        "subject",
    );
    check(
        post(
            ce,
            r#"{"specversion":"1.0","source":"/pos","type":"t"}"#,
            &acme,
        ),
        400,
        "id",
    );
    check(
        post(ce, &structured("e-1", r#","specversion":"0.3""#), &acme),
        400,
        "specversion",
    );
    // The tenant is the token's: an event may not name another.
    check(
        post(
            ce,
            &structured("e-1", r#","tenant":"globex-retail""#),
            &acme,
        ),
        400,
        "tenant",
    );
    // One bad event refuses the whole batch, naming it.
    let batch = format!(
        "[{},{}]",
        structured("ok-1", ""),
        structured("bad-1", r#","time":"no""#)
    );
    let (status, body) = post("application/cloudevents-batch+json", &batch, &acme);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["index"].as_u64(), body["attribute"].as_str()),
        (Some(1), Some("time"))
    );
    // Binary mode without ce-specversion.
    let (status, body) = post("application/json", "{}", &acme);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ce-specversion")),
        "{body}"
    );
    // Not JSON.
    let (status, _) = post(ce, "{not json", &acme);
    assert_eq!(status, 400);

    // No token, a wrong one, the admin's for publishing.
    let (status, body) = post(ce, &structured("e-1", ""), "X-Nothing: 1");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = post(ce, &structured("e-1", ""), &bearer("guess"));
    assert_eq!(status, 401);
    let (status, _) = post(ce, &structured("e-1", ""), &bearer(ADMIN_TOKEN));
    assert_eq!(status, 401);

    // Over the limits.
    let big = structured("big-1", &format!(r#","data":"{}""#, "x".repeat(MAX_BODY)));
    let (status, body) = post(ce, &big, &acme);
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let six: Vec<String> = (0..6)
        .map(|i| structured(&format!("six-{i}"), ""))
        .collect();
    let (status, _) = post(
        "application/cloudevents-batch+json",
        &format!("[{}]", six.join(",")),
        &acme,
    );
    assert_eq!(status, 413);

    // Nothing of the above was stored: the next event is the log's first.
    let (status, body) = post(ce, &structured("first", ""), &acme);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["seq"], 1);
}

/// A body over the limit is refused from its Content-Length, before it
/// is sent: the client gets 413 without writing a byte of it.
#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_TOKEN}\r\n\
         Content-Type: application/cloudevents+json\r\nContent-Length: 104857600\r\n\r\n"
    )
    .expect("send the head");
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).expect("an answer before any body");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn tenants_cannot_reach_each_other_and_admin_routes_need_the_admin_token() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let (acme, globex, admin) = (
        bearer(ACME_TOKEN),
        bearer(GLOBEX_TOKEN),
        bearer(ADMIN_TOKEN),
    );
    let (status, body) = server.curl("/v1/tenants/acme-pos/plugins", &["-H", &acme]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"][0]["plugin"], "audit");
    assert_eq!(body["plugins"][0]["status"], "active");
    // Another tenant's plugins, dead letters, redrive: as if absent.
    for (method, path) in [
        ("GET", "/v1/tenants/globex-retail/plugins"),
        (
            "GET",
            "/v1/tenants/globex-retail/plugins/audit/dead-letters",
        ),
        (
            "POST",
            "/v1/tenants/globex-retail/plugins/audit/dead-letters/1/redrive",
        ),
        (
            "DELETE",
            "/v1/tenants/globex-retail/plugins/audit/dead-letters/1",
        ),
    ] {
        let (status, body) = server.curl(path, &["-X", method, "-H", &acme]);
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let (status, _) = server.curl("/v1/tenants/globex-retail/plugins", &["-H", &globex]);
    assert_eq!(status, 200);
    // Admin routes.
    let (status, _) = server.curl("/v1/admin/plugins", &["-H", &acme]);
    assert_eq!(status, 401);
    let (status, _) = server.curl("/v1/admin/plugins", &[]);
    assert_eq!(status, 401);
    let (status, body) = server.curl("/v1/admin/plugins", &["-H", &admin]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"].as_array().map(Vec::len), Some(2));
    let (status, body) = server.curl("/v1/tenants/globex-retail/plugins", &["-H", &admin]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.curl("/v1/admin/tenants", &["-H", &admin]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenants"].as_array().map(Vec::len), Some(2));
    // No dead letter to redrive: 404 for the owner too.
    let (status, _) = server.curl(
        "/v1/tenants/acme-pos/plugins/audit/dead-letters/1/redrive",
        &["-X", "POST", "-H", &acme],
    );
    assert_eq!(status, 404);
}

#[test]
fn metrics_parse_and_move_with_the_events() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let metrics = || {
        let output = Command::new("curl")
            .args(["-s", &format!("{}/metrics", server.url)])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let before = metrics();
    samples(&before);
    let ids: Vec<String> = (0..3).map(|i| format!("m-{i}")).collect();
    for id in &ids {
        let (status, _) = server.post(
            ACME_TOKEN,
            "application/cloudevents+json",
            &structured(id, ""),
        );
        assert_eq!(status, 202);
    }
    let (status, _) = server.curl(
        "/v1/events",
        &["-H", &bearer("nope"), "--data-binary", "{}"],
    );
    assert_eq!(status, 401);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    server.deliveries_of(&refs);
    let acme_label = [("tenant", "acme-pos")];
    // The cursor is committed just after the deliveries are printed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = metrics();
        if value_of(&text, "plugbus_lag_events", &acme_label) == 0.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        value_of(&after, "plugbus_ingested_events_total", &acme_label),
        3.0
    );
    assert_eq!(
        value_of(
            &after,
            "plugbus_deliveries_total",
            &[("tenant", "acme-pos"), ("outcome", "handled")]
        ),
        3.0,
        "{after}"
    );
    assert_eq!(
        value_of(&after, "plugbus_handle_seconds_count", &acme_label),
        3.0
    );
    assert!(value_of(&after, "plugbus_fuel_consumed_sum", &acme_label) > 0.0);
    assert_eq!(
        value_of(
            &after,
            "plugbus_rejected_requests_total",
            &[("status", "401")]
        ),
        1.0
    );
    assert_eq!(value_of(&after, "plugbus_lag_events", &acme_label), 0.0);
    assert_eq!(value_of(&after, "plugbus_quarantined", &acme_label), 0.0);
    assert!(value_of(&after, "plugbus_log_append_seconds_count", &[]) >= 3.0);
}

/// Producers keep publishing while the host gets SIGTERM: every event it
/// acknowledged is in the log afterwards.
#[test]
fn sigterm_under_load_loses_no_acknowledged_event() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("load-{p}-{i}");
                    let body = structured(&id, "");
                    let Ok(mut stream) = std::net::TcpStream::connect(&addr) else { break };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let sent = write!(
                        stream,
                        "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                         Authorization: Bearer {ACME_TOKEN}\r\n\
                         Content-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sent.is_err() {
                        break;
                    }
                    let mut answer = String::new();
                    if stream.read_to_string(&mut answer).is_err() {
                        continue;
                    }
                    if answer.starts_with("HTTP/1.1 202") {
                        acked.push(id);
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let (status, data) = server.terminate();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer"))
        .collect();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    assert!(
        acked.len() > 10,
        "only {} events were acknowledged",
        acked.len()
    );
    use plugbus::log::EventStore as _;
    let log = plugbus::log::SqliteLog::open(
        &data.path().join("data"),
        plugbus::log::SqliteLogConfig::default(),
    )
    .expect("the log");
    let stored: std::collections::BTreeSet<String> = log
        .read("acme-pos", 0, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|s| s.event.id().to_owned())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(id),
            "{id} was acknowledged but is not in the log"
        );
    }
}

/// The command-line client publishes from flags and from a file, and
/// lists plugins and status, through the HTTP API.
#[test]
fn the_cli_client_publishes_and_lists() {
    let server = Server::start(plugins(), tempfile::tempdir().expect("data"));
    let plugbus = |args: &[&str], token: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(args)
            .env("PLUGBUS_URL", &server.url)
            .env("PLUGBUS_TOKEN", token)
            .output()
            .expect("run plugbus");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = plugbus(
        &[
            "publish",
            "--type",
            "order.placed",
            "--id",
            "cli-1",
            "--subject",
            "o-1",
            "--data",
            r#"{"total":5}"#,
            "--json",
        ],
        ACME_TOKEN,
    );
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(answer["accepted"][0]["id"], "cli-1");
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        file.path(),
        format!("[{},{}]", structured("cli-2", ""), structured("cli-3", "")),
    )
    .expect("write");
    let path = file.path().to_str().expect("utf-8");
    let (code, out, err) = plugbus(&["publish", "--file", path], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cli-2") && out.contains("cli-3"), "{out}");
    server.deliveries_of(&["cli-1", "cli-2", "cli-3"]);
    // Many events from a file of lines, in batches (progress on a
    // terminal only); published again, all are duplicates.
    let lines = tempfile::NamedTempFile::new().expect("file");
    let text: Vec<String> = (0..250)
        .map(|i| structured(&format!("line-{i}"), ""))
        .collect();
    std::fs::write(lines.path(), text.join("\n")).expect("write");
    let lines_path = lines.path().to_str().expect("utf-8");
    let publish_lines = [
        "publish",
        "--lines",
        lines_path,
        "--batch-size",
        "5",
        "--json",
    ];
    let (code, out, err) = plugbus(&publish_lines, ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (summary["stored"].as_u64(), summary["duplicates"].as_u64()),
        (Some(250), Some(0))
    );
    let (code, out, err) = plugbus(&publish_lines, ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(summary["duplicates"], 250);
    // A refusal is an error naming the attribute.
    let (code, _, err) = plugbus(&["publish", "--type", "t", "--source", ""], ACME_TOKEN);
    assert_eq!(code, 2);
    assert!(err.contains("400") && err.contains("source"), "{err}");
    let (code, out, err) = plugbus(&["plugins", "--tenant", "acme-pos"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit") && out.contains("active"), "{out}");
    // A table: the cursor and lag of each row end where their headings do.
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    let end_of = |line: &str, word: &str| line.find(word).map(|at| at + word.len());
    let (cursor_end, lag_end) = (end_of(header, "cursor"), end_of(header, "lag"));
    for row in lines {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let (cursor, lag) = (columns.get(4).copied(), columns.get(5).copied());
        let at =
            |end: Option<usize>, word: Option<&str>| row.get(end?.checked_sub(word?.len())?..end?);
        assert_eq!(
            (at(cursor_end, cursor), at(lag_end, lag)),
            (cursor, lag),
            "{out}"
        );
        assert!(cursor.is_some() && lag.is_some(), "{out}");
    }
    // Without --tenant, a tenant's token lists its own tenant's.
    let (code, out, err) = plugbus(&["plugins"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("acme-pos") && !out.contains("globex"), "{out}");
    let (code, out, err) = plugbus(&["status"], ADMIN_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ready: 2 plugins: 2 active"), "{out}");
}

/// The operations on a tenant's plugin: recent failures, dead letters
/// (list, redrive, discard), replay, resume; and the admin's reload.
#[test]
fn failures_dead_letters_replay_and_reload_over_http() {
    let dir = plugins_with_mixed();
    let server = Server::start(dir, tempfile::tempdir().expect("data"));
    let (acme, admin) = (bearer(ACME_TOKEN), bearer(ADMIN_TOKEN));
    let event = r#"{"specversion":"1.0","id":"p-1","source":"/pos","type":"mix.permanent"}"#;
    let (status, _) = server.post(ACME_TOKEN, "application/cloudevents+json", event);
    assert_eq!(status, 202);
    server.deliveries_of(&["p-1"]);
    let base = "/v1/tenants/acme-pos/plugins/mixed";
    let deadline = Instant::now() + Duration::from_secs(30);
    let seq = loop {
        let (status, body) = server.curl(&format!("{base}/dead-letters"), &["-H", &acme]);
        assert_eq!(status, 200, "{body}");
        if let Some(seq) = body["dead_letters"][0]["seq"].as_u64() {
            assert_eq!(
                body["dead_letters"][0]["attempts"][0]["kind"],
                "handler_permanent"
            );
            break seq;
        }
        assert!(Instant::now() < deadline, "no dead letter: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Recent failures are taken from the delivery stream, a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = server.curl("/v1/tenants/acme-pos/failures", &["-H", &acme]);
        assert_eq!(status, 200, "{body}");
        if body["failures"][0].is_object() || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(body["failures"][0]["event_id"], "p-1");
    assert_eq!(body["failures"][0]["kind"], "handler_permanent");

    // The same through the command line's --url.
    let plugbus = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(args)
            .args(["--url", &server.url])
            .env("PLUGBUS_TOKEN", ACME_TOKEN)
            .output()
            .expect("run plugbus");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {err}");
        out
    };
    let listed = plugbus(&["dlq", "list", "--tenant", "acme-pos", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    assert_eq!(
        (listed["event_id"].as_str(), listed["plugin"].as_str()),
        (Some("p-1"), Some("mixed"))
    );
    let seq_text = seq.to_string();
    let shown = plugbus(&[
        "dlq", "show", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &seq_text,
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(shown["event"]["id"], "p-1");

    // Redriven, it fails again: its dead letter gets the new attempt.
    let (status, _) = server.curl(
        &format!("{base}/dead-letters/{seq}/redrive"),
        &["-X", "POST", "-H", &acme],
    );
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = server.curl(&format!("{base}/dead-letters"), &["-H", &acme]);
        if body["dead_letters"][0]["attempts"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "no second attempt: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = server.curl(
        &format!("{base}/dead-letters/{seq}"),
        &["-X", "DELETE", "-H", &acme],
    );
    assert_eq!(status, 204);
    let (status, _) = server.curl(
        &format!("{base}/dead-letters/{seq}"),
        &["-X", "DELETE", "-H", &acme],
    );
    assert_eq!(status, 404);

    // Replay from the start: p-1 is delivered again.
    let (status, body) = server.curl(
        &format!("{base}/replay?from=1"),
        &["-X", "POST", "-H", &acme],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["first"], 1);
    server.deliveries_of(&["p-1"]);
    let out = plugbus(&[
        "replay",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
        "--from",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(out.contains("delivery resumes at position 1"), "{out}");
    let (status, body) = server.curl(
        &format!("{base}/replay?from=someday"),
        &["-X", "POST", "-H", &acme],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_replay")),
        "{body}"
    );
    let (status, _) = server.curl(&format!("{base}/resume"), &["-X", "POST", "-H", &acme]);
    assert_eq!(status, 404, "not quarantined");

    // Reload: the admin's.
    let (status, _) = server.curl("/v1/admin/reload", &["-X", "POST", "-H", &acme]);
    assert_eq!(status, 401);
    let (status, body) = server.curl("/v1/admin/reload", &["-X", "POST", "-H", &admin]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"], 3);
}

/// A stand-in OpenTelemetry collector: takes OTLP/HTTP posts on a free
/// port, answers 200, and passes on each request, decoded.
struct Collector {
    url: String,
    requests: std::sync::mpsc::Receiver<(String, ExportTraceServiceRequest)>,
}

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let tx = tx.clone();
                std::thread::spawn(move || Self::serve(stream, &tx));
            }
        });
        Self { url, requests }
    }

    /// Answers the requests of one connection, keep-alive.
    fn serve(
        stream: std::net::TcpStream,
        tx: &std::sync::mpsc::Sender<(String, ExportTraceServiceRequest)>,
    ) {
        use prost::Message as _;
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
                assert!(
                    !name.eq_ignore_ascii_case("transfer-encoding"),
                    "the stand-in collector reads Content-Length bodies only: {line}"
                );
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let decoded = ExportTraceServiceRequest::decode(body.as_slice())
                .expect("an OTLP protobuf trace request");
            let _ = tx.send((path, decoded));
            let answered = writer.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            );
            if answered.is_err() {
                return;
            }
        }
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, OtlpSpan)> {
        let mut spans = Vec::new();
        while let Ok((path, request)) = self.requests.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(path, "/v1/traces");
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        AnyValue::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                }
            }
        }
        spans
    }
}

/// A string attribute of an exported span.
fn attribute<'a>(span: &'a OtlpSpan, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// With `[otlp] endpoint` set, the ingest and delivery spans reach the
/// collector as one trace continued from the event's `traceparent`, and
/// the delivery of an emitted event is a child of the delivery that
/// emitted it.
#[test]
fn spans_are_exported_to_the_configured_collector_as_one_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PRODUCER: &str = "00f067aa0ba902b7";
    let collector = Collector::start();
    let plugins = plugins();
    std::fs::copy(
        artifacts::LOW_STOCK_ALERT,
        plugins.path().join("acme-pos/low-stock.wasm"),
    )
    .expect("copy");
    let server = Server::start_with(
        plugins,
        tempfile::tempdir().expect("data"),
        &format!("[otlp]\nendpoint = \"{}\"\n", collector.url),
    );
    assert!(
        server
            .log()
            .contains(&format!("exporting spans to {}/v1/traces", collector.url)),
        "{}",
        server.log()
    );
    let event = format!(
        r#"{{"specversion":"1.0","id":"traced-1","source":"/pos/1","type":"inventory.stock_changed",
            "traceparent":"00-{TRACE}-{PRODUCER}-01","tracestate":"vendor=pos",
            "data":{{"sku":"sku-7","new_quantity":2}}}}"#
    );
    let (status, _) = server.post(ACME_TOKEN, "application/cloudevents+json", &event);
    assert_eq!(status, 202);
    // Its deliveries to both plugins, then those of what low-stock emits.
    let mut deliveries = Vec::new();
    while deliveries.len() < 2 {
        match server.stdout.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line["event_id"] == "traced-1" => deliveries.push(line),
            Ok(_) => {}
            Err(_) => panic!("no two deliveries of traced-1: {deliveries:#?}"),
        }
    }
    let emitted = deliveries
        .iter()
        .filter(|d| d["plugin"] == "low-stock")
        .flat_map(|d| d["emitted"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    assert!(!emitted.is_empty(), "low-stock emits: {deliveries:#?}");
    let ids: Vec<&str> = emitted.iter().map(String::as_str).collect();
    server.deliveries_of(&ids);
    // A batch, each event of its own trace: handled together through
    // `handle-batch` when the consumer reads them at once, and still one
    // span per delivery, in the event's trace.
    let traces: Vec<String> = (1..=3).map(|i| format!("{i:032x}")).collect();
    let batch: Vec<String> = traces
        .iter()
        .enumerate()
        .map(|(i, trace)| {
            format!(
                r#"{{"specversion":"1.0","id":"batched-{i}","source":"/pos/1","type":"order.placed",
                    "traceparent":"00-{trace}-{PRODUCER}-01"}}"#
            )
        })
        .collect();
    // The request itself carries a trace context too: its ingest span
    // continues that one, the deliveries their events'.
    const REQUEST_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CLIENT: &str = "b7ad6b7169203331";
    let (status, _) = server.curl(
        "/v1/events",
        &[
            "-H",
            &bearer(ACME_TOKEN),
            "-H",
            "Content-Type: application/cloudevents-batch+json",
            "-H",
            &format!("traceparent: 00-{REQUEST_TRACE}-{CLIENT}-01"),
            "--data-binary",
            &format!("[{}]", batch.join(",")),
        ],
    );
    assert_eq!(status, 202);
    server.deliveries_of(&["batched-0", "batched-1", "batched-2"]);
    // A batch of events with no trace context: each delivery span stands
    // alone, in the log and in the exported spans, never inside the span
    // of the batch's earlier deliveries.
    let untraced: Vec<String> = (0..4).map(|i| format!("untraced-{i}")).collect();
    let batch: Vec<String> = untraced
        .iter()
        .map(|id| {
            format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"order.placed"}}"#
            )
        })
        .collect();
    let (status, _) = server.post(
        ACME_TOKEN,
        "application/cloudevents-batch+json",
        &format!("[{}]", batch.join(",")),
    );
    assert_eq!(status, 202);
    let ids: Vec<&str> = untraced.iter().map(String::as_str).collect();
    server.deliveries_of(&ids);
    let log = server.log_until(|log| {
        ids.iter()
            .all(|id| log.contains(&format!("type=order.placed id={id} ")))
    });
    assert_delivery_spans_stand_alone(&log, &ids);
    // SIGTERM: the exporter sends what it still holds before the exit.
    let (exit, _data) = server.terminate();
    assert!(exit.success(), "{exit}");

    let spans = collector.spans();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
    };
    assert!(
        spans.iter().all(|(service, _)| service == "plugbus"),
        "service.name: {:?}",
        spans.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let ingest: Vec<_> = named("ingest")
        .into_iter()
        .filter(|s| attribute(s, "event_id") == Some("traced-1"))
        .collect();
    assert_eq!(ingest.len(), 1, "one ingest span: {spans:#?}");
    assert_eq!(hex(&ingest[0].trace_id), TRACE);
    assert_eq!(hex(&ingest[0].parent_span_id), PRODUCER);
    assert_eq!(attribute(ingest[0], "tenant"), Some("acme-pos"));
    assert_eq!(attribute(ingest[0], "event_id"), Some("traced-1"));

    let deliveries = named("delivery");
    let of = |event: &str, plugin: &str| {
        deliveries
            .iter()
            .copied()
            .filter(|s| {
                attribute(s, "event_id") == Some(event) && attribute(s, "plugin") == Some(plugin)
            })
            .collect::<Vec<_>>()
    };
    // The published event, to both plugins: children of the producer.
    for plugin in ["audit", "low-stock"] {
        let found = of("traced-1", plugin);
        assert_eq!(
            found.len(),
            1,
            "one delivery span to {plugin}: {deliveries:#?}"
        );
        let span = found[0];
        assert_eq!(hex(&span.trace_id), TRACE, "{plugin}");
        assert_eq!(hex(&span.parent_span_id), PRODUCER, "{plugin}");
        assert_eq!(attribute(span, "tenant"), Some("acme-pos"));
        assert!(attribute(span, "version").is_some_and(|v| !v.is_empty()));
        assert_eq!(span.trace_state, "vendor=pos", "{plugin}");
    }
    // The emitted event's delivery continues the emitting delivery.
    let emitter = of("traced-1", "low-stock")[0];
    for id in &emitted {
        let found = of(id, "audit");
        assert_eq!(found.len(), 1, "the emitted {id} to audit: {deliveries:#?}");
        assert_eq!(hex(&found[0].trace_id), TRACE);
        assert_eq!(found[0].parent_span_id, emitter.span_id);
    }
    let batch_ingest: Vec<_> = named("ingest")
        .into_iter()
        .filter(|s| attribute(s, "event_id") == Some("batched-0"))
        .collect();
    assert_eq!(batch_ingest.len(), 1, "{spans:#?}");
    assert_eq!(hex(&batch_ingest[0].trace_id), REQUEST_TRACE);
    assert_eq!(hex(&batch_ingest[0].parent_span_id), CLIENT);
    for (i, trace) in traces.iter().enumerate() {
        let found = of(&format!("batched-{i}"), "audit");
        assert_eq!(found.len(), 1, "batched-{i}: {deliveries:#?}");
        assert_eq!(&hex(&found[0].trace_id), trace);
        assert_eq!(hex(&found[0].parent_span_id), PRODUCER);
    }
    // No delivery span is the parent of another, unless the event's own
    // traceparent names it (an emitted event continues the delivery that
    // emitted it).
    let delivery_spans: std::collections::HashSet<&[u8]> =
        deliveries.iter().map(|s| s.span_id.as_slice()).collect();
    for span in &deliveries {
        if delivery_spans.contains(span.parent_span_id.as_slice()) {
            let parent = hex(&span.parent_span_id);
            assert!(
                attribute(span, "traceparent").is_some_and(|t| t.contains(&parent)),
                "the delivery of {:?} is inside another delivery's span {parent}: {deliveries:#?}",
                attribute(span, "event_id")
            );
        }
    }
    // Without a trace context, each starts a trace of its own.
    let mut untraced_traces = std::collections::HashSet::new();
    for id in &untraced {
        let found = of(id, "audit");
        assert_eq!(found.len(), 1, "{id}: {deliveries:#?}");
        assert!(
            found[0].parent_span_id.is_empty(),
            "{id}'s delivery span has no parent: {:?}",
            found[0]
        );
        untraced_traces.insert(found[0].trace_id.clone());
    }
    assert_eq!(untraced_traces.len(), untraced.len(), "{deliveries:#?}");
}

/// Every log line is in at most one delivery span, and the audit line of
/// each of `ids` is in the span of its own event.
fn assert_delivery_spans_stand_alone(log: &str, ids: &[&str]) {
    for line in log.lines() {
        assert!(
            line.matches("delivery{").count() <= 1,
            "a delivery span inside another: {line}"
        );
    }
    for id in ids {
        let audit = format!("type=order.placed id={id} ");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&audit)).collect();
        assert_eq!(lines.len(), 1, "the audit line of {id}:\n{log}");
        assert!(
            lines[0].contains(&format!("event_id={id}}}: ")),
            "{id} logs in its own delivery span: {}",
            lines[0]
        );
    }
}

/// A collector that cannot be reached costs spans and an error line,
/// never a delivery or the exit status.
#[test]
fn an_unreachable_collector_does_not_hold_up_delivery() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = Server::start_with(
        plugins(),
        tempfile::tempdir().expect("data"),
        &format!("[otlp]\nendpoint = \"http://127.0.0.1:{port}\"\n"),
    );
    let (status, _) = server.post(
        ACME_TOKEN,
        "application/cloudevents+json",
        &structured("unexported-1", ""),
    );
    assert_eq!(status, 202);
    server.deliveries_of(&["unexported-1"]);
    let log = std::sync::Arc::clone(&server.stderr);
    let (exit, _data) = server.terminate();
    assert!(exit.success(), "{exit}");
    // The reader of stderr may still be behind the exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged =
        |log: &str| log.contains("ExportError") || log.contains("cannot send the last spans");
    while !logged(&log.lock().expect("log")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log.lock().expect("log").clone();
    assert!(logged(&log), "the failed export is logged: {log}");
}

/// `plugbus quarantine list|resume --url` go through a running host's API,
/// with the tenant's token for its own plugins only.
#[test]
fn quarantine_is_listed_and_lifted_over_http() {
    let dir = plugins_with_mixed();
    let server = Server::start_with(
        dir,
        tempfile::tempdir().expect("data"),
        "[delivery]\nquarantine_after = 2\nquarantine_seconds = 3600\n",
    );
    for id in ["q-1", "q-2"] {
        let event = format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/pos","type":"mix.permanent"}}"#
        );
        let (status, _) = server.post(ACME_TOKEN, "application/cloudevents+json", &event);
        assert_eq!(status, 202);
    }
    server.deliveries_of(&["q-1", "q-2"]);
    let plugbus = |args: &[&str], token: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(args)
            .args(["--url", &server.url, "--token", token])
            .output()
            .expect("run plugbus");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The quarantine is recorded a moment after the second failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (ok, out, err) = plugbus(
            &["quarantine", "list", "--tenant", "acme-pos", "--json"],
            ACME_TOKEN,
        );
        assert!(ok, "{err}");
        if !out.trim().is_empty() {
            break out;
        }
        assert!(Instant::now() < deadline, "never quarantined");
        std::thread::sleep(Duration::from_millis(100));
    };
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    assert_eq!(
        (listed["tenant"].as_str(), listed["plugin"].as_str()),
        (Some("acme-pos"), Some("mixed"))
    );
    // Every tenant's, with the admin token only.
    let (ok, out, _) = plugbus(&["quarantine", "list", "--json"], ADMIN_TOKEN);
    assert!(ok && out.contains("\"mixed\""), "{out}");
    // A tenant's token without --tenant: its own.
    let (ok, out, err) = plugbus(&["quarantine", "list", "--json"], ACME_TOKEN);
    assert!(ok && out.contains("\"mixed\""), "{out}{err}");
    // Another tenant can neither see nor lift it.
    let (ok, out, err) = plugbus(&["quarantine", "list", "--json"], GLOBEX_TOKEN);
    assert!(ok && out.trim().is_empty(), "{out}{err}");
    let (ok, _, err) = plugbus(
        &["quarantine", "list", "--tenant", "acme-pos"],
        GLOBEX_TOKEN,
    );
    assert!(!ok && err.contains("disagrees with the token"), "{err}");
    let resume = [
        "quarantine",
        "resume",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
    ];
    let (ok, _, err) = plugbus(&resume, GLOBEX_TOKEN);
    assert!(!ok && err.contains("disagrees with the token"), "{err}");
    let (ok, _, err) = plugbus(&["quarantine", "resume", "--plugin", "mixed"], GLOBEX_TOKEN);
    assert!(!ok && err.contains("not quarantined"), "{err}");
    let (ok, out, err) = plugbus(&resume, ACME_TOKEN);
    assert!(
        ok && out.contains("lifted the quarantine of acme-pos/mixed"),
        "{out}{err}"
    );
    let (ok, out, err) = plugbus(
        &["quarantine", "list", "--tenant", "acme-pos", "--json"],
        ACME_TOKEN,
    );
    assert!(ok && out.trim().is_empty(), "{out}{err}");
    let (ok, _, err) = plugbus(&resume, ACME_TOKEN);
    assert!(!ok && err.contains("not quarantined"), "{err}");
}

// ---------------------------------------------------------------------
// Hostile clients, in process: the API over a durable bus (no plugins) in
// a runtime of the test's own, served by `plugbus::api::serve` on
// 127.0.0.1 where the wire matters, called with `oneshot` where it does
// not.
// ---------------------------------------------------------------------

use plugbus::api::{Api, ApiConfig, ApiLimits, RateLimit, ServerLimits};
use tower::ServiceExt as _;

/// The API of a host with no plugins, its bus and its log.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    api: std::sync::Arc<Api>,
    bus: std::sync::Arc<plugbus::durable::DurableBus>,
    _data: tempfile::TempDir,
}

impl InProcess {
    fn new(limits: ApiLimits) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let data = tempfile::tempdir().expect("data");
        let hash = plugbus::config::hash_token;
        let (api, bus) = runtime.block_on(async {
            let host = std::sync::Arc::new(
                plugbus::Host::new(plugbus::HostConfig::default()).expect("a host"),
            );
            let log = plugbus::log::SqliteLog::open(
                data.path(),
                plugbus::log::SqliteLogConfig::default(),
            )
            .expect("the log");
            let bus = std::sync::Arc::new(
                plugbus::durable::DurableBus::start(
                    host,
                    std::sync::Arc::new(log),
                    plugbus::durable::DurableConfig::default(),
                )
                .await
                .expect("the bus"),
            );
            let config = ApiConfig {
                max_body_bytes: MAX_BODY,
                max_batch_events: 5,
                tenant_tokens: [
                    ("acme-pos".to_owned(), hash(ACME_TOKEN)),
                    ("globex-retail".to_owned(), hash(GLOBEX_TOKEN)),
                ]
                .into(),
                admin_token: Some(hash(ADMIN_TOKEN)),
                plugins_dir: None,
            };
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle();
            let api = Api::with_limits(bus.clone(), config, limits, Some(metrics));
            (api, bus)
        });
        Self {
            runtime,
            api,
            bus,
            _data: data,
        }
    }

    /// One request through the routes; the status, `Retry-After` and body.
    fn call(
        &self,
        request: axum::http::Request<axum::body::Body>,
    ) -> (u16, Option<String>, serde_json::Value) {
        self.runtime.block_on(async {
            let response = plugbus::api::router(self.api.clone())
                .oneshot(request)
                .await
                .expect("infallible");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("the body");
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            (status, retry_after, body)
        })
    }

    /// Posts `body` to /v1/events as `content_type` with `token`.
    fn post(
        &self,
        token: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, Option<String>, serde_json::Value) {
        self.call(ingest_request(
            token,
            content_type,
            axum::body::Body::from(body.to_owned()),
        ))
    }

    /// The ids of `tenant`'s events in the log.
    fn stored(&self, tenant: &str) -> Vec<String> {
        self.bus
            .log()
            .read(tenant, 0, usize::MAX)
            .expect("read the log")
            .into_iter()
            .map(|s| s.event.id().to_owned())
            .collect()
    }

    /// Serves on a free port of 127.0.0.1 until the returned handle stops it.
    fn serve(&self, limits: ServerLimits) -> Serving<'_> {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("the address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = self.runtime.spawn(plugbus::api::serve(
            listener,
            self.api.clone(),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        Serving {
            runtime: &self.runtime,
            addr,
            stop: Some(stop),
            done: Some(done),
        }
    }
}

fn ingest_request(
    token: &str,
    content_type: &str,
    body: axum::body::Body,
) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::post("/v1/events")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(body)
        .expect("a request")
}

/// `plugbus::api::serve` running on `addr`.
struct Serving<'a> {
    runtime: &'a tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Serving<'_> {
    fn connect(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        stream
    }

    /// Stops taking connections, and waits (at most 30 s) until `serve`
    /// has returned.
    fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let done = self.done.take().expect("running");
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), done).await })
            .expect("serve returns after its drain")
            .expect("the serve task")
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
    }
}

/// What became of a connection the server should close: `Ok(text)` with
/// what it answered first (empty when it closed without an answer), or
/// `Err` when it stayed open for the whole read timeout.
fn closed_by_server(stream: &mut std::net::TcpStream) -> Result<String, String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "still open after the read timeout; it answered {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
            // Reset: closed with data unread.
            Err(_) => return Ok(String::from_utf8_lossy(&answer).into_owned()),
        }
    }
}

/// One GET on a keep-alive connection; the answer's status line.
fn get_on(stream: &mut std::net::TcpStream, path: &str) -> std::io::Result<String> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status.trim_end().to_owned())
}

/// A client that sends half a request head, then one header line every
/// 50 ms, is cut off after the header read timeout (200 ms here), with
/// 408 or at least a close; a whole request still gets its answer.
#[test]
fn a_slow_request_head_is_cut_off() {
    let host = InProcess::new(ApiLimits::default());
    let server = host.serve(ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    });
    let mut stream = server.connect();
    write!(stream, "POST /v1/events HTTP/1.1\r\nHost: x\r\n").expect("half a head");
    let mut dripping = stream.try_clone().expect("clone");
    let drip = std::thread::spawn(move || {
        // At most 20 s of drip, whatever the server does.
        for i in 0..400 {
            if write!(dripping, "x-drip-{i}: 1\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let answer = closed_by_server(&mut stream).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("header_read_timeout"), "{answer}");
    }
    drop(stream);
    drip.join().expect("the drip");
    // An idle connection is closed too, without an answer.
    let mut idle = server.connect();
    assert_eq!(closed_by_server(&mut idle).as_deref(), Ok(""));
    // A client in time is served.
    let mut prompt = server.connect();
    assert_eq!(
        get_on(&mut prompt, "/healthz").expect("an answer"),
        "HTTP/1.1 200 OK"
    );
    server.stop().expect("serve");
}

/// A body that stops arriving is answered 408 after the body read
/// timeout, and nothing of it is stored.
#[test]
fn a_slow_request_body_is_answered_408() {
    let host = InProcess::new(ApiLimits {
        body_read_timeout: Duration::from_millis(200),
        ..ApiLimits::default()
    });
    let server = host.serve(ServerLimits::default());
    let mut stream = server.connect();
    let event = structured("slow-1", "");
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_TOKEN}\r\n\
         Content-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n{}",
        event.len() + 100,
        event
    )
    .expect("the head and part of the body");
    let answer = closed_by_server(&mut stream).unwrap_or_else(|e| panic!("{e}"));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
    assert!(host.stored("acme-pos").is_empty());
    server.stop().expect("serve");
}

/// With at most two connections open, a third is refused at once (503 or
/// a close), and one is taken again once another has closed.
#[test]
fn connections_over_the_limit_are_refused_until_one_closes() {
    let host = InProcess::new(ApiLimits::default());
    let server = host.serve(ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    });
    let mut open: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = server.connect();
            assert_eq!(
                get_on(&mut stream, "/healthz").expect("an answer"),
                "HTTP/1.1 200 OK"
            );
            stream
        })
        .collect();
    let mut third = server.connect();
    // Were it taken, this would be answered 200.
    let _ = write!(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = closed_by_server(&mut third).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("max_connections"), "{answer}");
    }
    // The two still work.
    for stream in &mut open {
        assert_eq!(
            get_on(stream, "/healthz").expect("an answer"),
            "HTTP/1.1 200 OK"
        );
    }
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut again = server.connect();
        if get_on(&mut again, "/healthz").is_ok_and(|status| status == "HTTP/1.1 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection taken after one closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop().expect("serve");
}

/// A tenant with two requests in flight (bodies that never end) gets 429
/// for a third, with Retry-After; another tenant does not; once one of
/// the two ends, the tenant is served again.
#[test]
fn a_tenant_over_its_requests_in_flight_gets_429() {
    let host = InProcess::new(ApiLimits {
        max_in_flight_per_tenant: 2,
        ..ApiLimits::default()
    });
    let ce = "application/cloudevents+json";
    // A request whose body never ends (until its sender is dropped).
    type Sender = futures::channel::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>;
    let hold = || -> (Sender, tokio::task::JoinHandle<_>) {
        let (sender, receiver) = futures::channel::mpsc::channel(1);
        let request = ingest_request(ACME_TOKEN, ce, axum::body::Body::from_stream(receiver));
        let router = plugbus::api::router(host.api.clone());
        (sender, host.runtime.spawn(router.oneshot(request)))
    };
    let mut held = vec![hold(), hold()];
    // The two take their places a moment after they were spawned; a probe
    // may take one first, and one of them be refused: then it is sent
    // again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (retry_after, body) = loop {
        for request in &mut held {
            if request.1.is_finished() {
                *request = hold();
            }
        }
        let (status, retry_after, body) = host.post(ACME_TOKEN, ce, &structured("third", ""));
        if status == 429 {
            break (retry_after, body);
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["limit"], "max_in_flight_per_tenant", "{body}");
    assert_eq!(body["error"], "too_many_requests", "{body}");
    let (status, _, body) = host.post(GLOBEX_TOKEN, ce, &structured("other", ""));
    assert_eq!(status, 202, "{body}");
    // One of the two ends (its body closes): a place is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = host.post(ACME_TOKEN, ce, &structured("fourth", ""));
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(Instant::now() < deadline, "the place never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tenant allowed one event a second (a burst of one) publishes one,
/// and the next is refused with 429, Retry-After and the limit named, and
/// not stored; another tenant is not affected.
#[test]
fn a_tenant_over_its_ingest_rate_gets_429_and_nothing_is_stored() {
    let one = RateLimit {
        events_per_second: 1,
        bytes_per_second: 0,
    };
    let host = InProcess::new(ApiLimits {
        tenant_rates: [("acme-pos".to_owned(), one)].into(),
        ..ApiLimits::default()
    });
    let ce = "application/cloudevents+json";
    // The refusal is certain only while less than a second has passed
    // since the first event was charged; on a machine slow enough to
    // take longer, try again from a full bucket.
    let mut refused = None;
    for attempt in 0..5 {
        std::thread::sleep(Duration::from_millis(if attempt == 0 { 0 } else { 2100 }));
        let started = Instant::now();
        let (status, _, body) =
            host.post(ACME_TOKEN, ce, &structured(&format!("in-{attempt}"), ""));
        assert_eq!(status, 202, "{body}");
        let (status, retry_after, body) =
            host.post(ACME_TOKEN, ce, &structured(&format!("over-{attempt}"), ""));
        if status == 429 {
            refused = Some((attempt, retry_after, body));
            break;
        }
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "the second event within a second was accepted: {status} {body}"
        );
    }
    let (attempt, retry_after, body) = refused.expect("refused once in five tries");
    let seconds: u64 = retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in whole seconds: {retry_after:?}"));
    assert!(seconds >= 1, "{seconds}");
    assert_eq!(
        (body["error"].as_str(), body["limit"].as_str()),
        (Some("rate_limited"), Some("events_per_second")),
        "{body}"
    );
    let stored = host.stored("acme-pos");
    assert!(stored.contains(&format!("in-{attempt}")), "{stored:?}");
    assert!(!stored.contains(&format!("over-{attempt}")), "{stored:?}");
    // The other tenant, on the default rate, publishes as it likes.
    let batch: Vec<String> = (0..5).map(|i| structured(&format!("g-{i}"), "")).collect();
    for _ in 0..3 {
        let (status, _, body) = host.post(
            GLOBEX_TOKEN,
            "application/cloudevents-batch+json",
            &format!("[{}]", batch.join(",")),
        );
        assert_eq!(status, 202, "{body}");
    }
}

/// An empty batch is valid CloudEvents: 202 with nothing accepted, and
/// nothing stored.
#[test]
fn an_empty_batch_is_accepted_and_stores_nothing() {
    let host = InProcess::new(ApiLimits::default());
    let (status, _, body) = host.post(ACME_TOKEN, "application/cloudevents-batch+json", "[]");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], serde_json::json!([]), "{body}");
    assert!(host.stored("acme-pos").is_empty());
    let (status, _, body) = host.post(
        ACME_TOKEN,
        "application/cloudevents+json",
        &structured("after-empty", ""),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["seq"], 1, "nothing before it: {body}");
}

/// A JSON number as an extension attribute is a CloudEvents Integer: 32
/// bits. One past the range is refused naming the attribute (in a batch,
/// with its index); the largest is accepted; a string is a String.
#[test]
fn integer_extensions_outside_32_bits_are_refused() {
    let host = InProcess::new(ApiLimits::default());
    let ce = "application/cloudevents+json";
    for value in ["2147483648", "-2147483649"] {
        let (status, _, body) = host.post(
            ACME_TOKEN,
            ce,
            &structured("big", &format!(r#","quantity":{value}"#)),
        );
        assert_eq!(status, 400, "{value}: {body}");
        assert_eq!(body["attribute"], "quantity", "{body}");
    }
    let batch = format!(
        "[{},{}]",
        structured("b-0", r#","quantity":1"#),
        structured("b-1", r#","quantity":2147483648"#)
    );
    let (status, _, body) = host.post(ACME_TOKEN, "application/cloudevents-batch+json", &batch);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["attribute"].as_str(), body["index"].as_u64()),
        (Some("quantity"), Some(1)),
        "{body}"
    );
    assert!(host.stored("acme-pos").is_empty());
    let (status, _, body) = host.post(
        ACME_TOKEN,
        ce,
        &structured("max", r#","quantity":2147483647,"big":"2147483648""#),
    );
    assert_eq!(status, 202, "{body}");
    let stored = host
        .bus
        .log()
        .read("acme-pos", 0, usize::MAX)
        .expect("read");
    assert_eq!(stored.len(), 1);
    let extensions = stored[0].event.extensions();
    assert_eq!(extensions["quantity"], "2147483647");
    assert_eq!(extensions["big"], "2147483648");
}

/// With a scrape token set, /metrics answers 401 without it (or with a
/// tenant's), and 200 with it or the admin token.
#[test]
fn metrics_need_the_scrape_token_when_one_is_set() {
    const SCRAPE: &str = "scrape-secret-token";
    let host = InProcess::new(ApiLimits {
        metrics_token: Some(plugbus::config::hash_token(SCRAPE)),
        ..ApiLimits::default()
    });
    let scrape = |token: Option<&str>| {
        let mut request = axum::http::Request::get("/metrics");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        host.call(request.body(axum::body::Body::empty()).expect("a request"))
    };
    for token in [None, Some("guess"), Some(ACME_TOKEN)] {
        let (status, _, body) = scrape(token);
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    for token in [SCRAPE, ADMIN_TOKEN] {
        let (status, _, body) = scrape(Some(token));
        assert_eq!(status, 200, "{token}: {body}");
    }
    // Without a scrape token, /metrics is open as before.
    let open = InProcess::new(ApiLimits::default());
    let (status, _, body) = open.call(
        axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .expect("a request"),
    );
    assert_eq!(status, 200, "{body}");
}

/// At shutdown an idle connection is closed at once, a request under way
/// gets the drain (300 ms here), then its connection is closed and
/// `serve` returns; no new connection is taken.
#[test]
fn shutdown_drains_for_a_bounded_time() {
    let host = InProcess::new(ApiLimits::default());
    let server = host.serve(ServerLimits {
        drain: Duration::from_millis(300),
        ..ServerLimits::default()
    });
    let mut idle = server.connect();
    assert_eq!(
        get_on(&mut idle, "/healthz").expect("an answer"),
        "HTTP/1.1 200 OK"
    );
    // A request whose body never comes: under way until it is cut off.
    let mut busy = server.connect();
    write!(
        busy,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_TOKEN}\r\n\
         Content-Type: application/cloudevents+json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .expect("a head");
    let addr = server.addr;
    let started = Instant::now();
    server.stop().expect("serve returns");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the drain is bounded: {:?}",
        started.elapsed()
    );
    assert!(
        closed_by_server(&mut idle).is_ok(),
        "the idle one is closed"
    );
    assert!(
        closed_by_server(&mut busy).is_ok(),
        "the busy one is closed"
    );
    let (status, _, _) = host.call(
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .expect("a request"),
    );
    assert_eq!(status, 503, "not ready once stopped");
    if let Ok(mut late) = std::net::TcpStream::connect(addr) {
        late.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        assert!(get_on(&mut late, "/healthz").is_err(), "no new connection");
    }
}
