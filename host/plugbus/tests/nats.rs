//! `plugbus serve` on the NATS backend (`[log] backend = "nats"`), driven
//! over HTTP against a real nats-server of the test's own: ingest answers
//! 503 and `/readyz` is not ready while NATS is down, and both recover by
//! themselves when it returns; a secret that cannot be read stops the
//! start with an error naming its setting; an event larger than the
//! server's `max_payload` allows is refused with 413, nothing of its
//! request stored.

use std::process::Command;
use std::time::{Duration, Instant};

use plugbus_artifacts as artifacts;
use plugbus_nats_server::NatsServer;

mod support;

const TOKEN: &str = "acme-secret-token";

/// A plugins directory with `audit` for acme-pos, a data directory, and a
/// configuration on the NATS backend at `url` with `extra` lines in
/// `[log.nats]`.
fn setup(url: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let plugins = dir.path().join("plugins/acme-pos");
    std::fs::create_dir_all(&plugins).expect("plugins directory");
    std::fs::copy(artifacts::AUDIT_LOG, plugins.join("audit.wasm")).expect("copy");
    let config = dir.path().join("plugbus.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             plugins_dir = \"{}\"\n\
             data_dir = \"{}\"\n\
             [tenants.acme-pos]\ntoken_sha256 = \"{}\"\n\
             [log]\nbackend = \"nats\"\n\
             [log.nats]\nservers = [\"{url}\"]\n\
             connect_timeout_ms = 5000\nrequest_timeout_ms = 1000\n\
             {extra}",
            dir.path().join("plugins").display(),
            dir.path().join("data").display(),
            plugbus::config::hash_token(TOKEN),
        ),
    )
    .expect("write the configuration");
    (dir, config)
}

fn event(id: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"order.placed","data":{{}}}}"#
    )
}

/// Publishes `id` until the host answers `want` (each try a new request),
/// within two minutes; returns the ids tried, the last one answered
/// `want`.
fn publish_until(server: &support::Server, id: &str, want: u16) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tried = Vec::new();
    loop {
        let id = format!("{id}-{}", tried.len());
        let (status, body) = server.post(TOKEN, "application/cloudevents+json", &event(&id));
        tried.push(id);
        if status == want {
            return tried;
        }
        assert!(
            Instant::now() < deadline,
            "ingest never answered {want}; the last answer {status} {body}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks `/readyz` until it answers `want`, within two minutes; returns
/// its body.
fn ready_until(server: &support::Server, want: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = server.curl("/readyz", &[]);
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {want}; the last answer {status} {body}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ingest_and_readiness_follow_nats_down_and_back() {
    let mut nats = NatsServer::start();
    let (_dir, config) = setup(&nats.url(), "");
    let server = support::Server::start(&config);
    let log = server.log_until(|log| log.contains("events are stored in"));
    assert!(
        log.contains("the NATS JetStream stream plugbus_events") && log.contains(&nats.url()),
        "{log}"
    );
    ready_until(&server, 200);
    let (status, body) = server.post(TOKEN, "application/cloudevents+json", &event("up-1"));
    assert_eq!(status, 202, "{body}");
    server.deliveries_of(&["up-1"]);

    // NATS goes away: the host says so, and refuses what it cannot store.
    nats.kill();
    publish_until(&server, "down", 503);
    let body = ready_until(&server, 503);
    assert!(
        body.as_str().is_some_and(|b| b.contains("event log")),
        "{body}"
    );

    // It comes back: both recover without a restart of the host, and what
    // is acknowledged now is delivered.
    nats.restart();
    ready_until(&server, 200);
    let accepted = publish_until(&server, "back", 202);
    let last = accepted.last().expect("one accepted").clone();
    server.deliveries_of(&[&last]);
    assert!(server.terminate().success());
}

#[test]
fn a_secret_that_cannot_be_read_stops_the_start_by_name() {
    let nats = NatsServer::start();
    let (_dir, config) = setup(
        &nats.url(),
        "token_env = \"PLUGBUS_TEST_NATS_TOKEN_NOT_SET\"\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("PLUGBUS_TEST_NATS_TOKEN_NOT_SET")
        .output()
        .expect("run plugbus serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("log.nats.token_env") && stderr.contains("PLUGBUS_TEST_NATS_TOKEN_NOT_SET"),
        "{stderr}"
    );
}

#[test]
fn a_token_from_the_environment_authenticates_and_is_never_logged() {
    let secret = "nats-s3cret-token";
    let nats = NatsServer::start_with(&["--auth", secret]);
    let (_dir, config) = setup(&nats.url(), "token_env = \"PLUGBUS_TEST_NATS_TOKEN\"\n");
    // Without it, the server refuses the host.
    let refused = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("PLUGBUS_TEST_NATS_TOKEN", "wrong")
        .output()
        .expect("run plugbus serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("NATS"), "{stderr}");
    // With it, the host serves; its log never shows the token.
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugbus"));
    command.env("PLUGBUS_TEST_NATS_TOKEN", secret);
    let server = support::Server::start_command(command, &config);
    ready_until(&server, 200);
    let (status, body) = server.post(TOKEN, "application/cloudevents+json", &event("auth-1"));
    assert_eq!(status, 202, "{body}");
    server.deliveries_of(&["auth-1"]);
    assert!(!server.log().contains(secret), "{}", server.log());
    assert!(server.terminate().success());
}

#[test]
fn an_event_over_the_servers_max_payload_is_refused_with_413_and_nothing_stored() {
    let nats_config = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(nats_config.path(), "max_payload: 65536\n").expect("write it");
    let path = nats_config.path().to_str().expect("a UTF-8 path");
    let nats = NatsServer::start_with(&["-c", path]);
    let (_dir, config) = setup(&nats.url(), "");
    let server = support::Server::start(&config);
    // http.max_body_bytes (1 MiB by default) is over the server's limit:
    // the start says so, naming both.
    let log = server.log_until(|log| log.contains("events are stored in"));
    assert!(
        log.contains("http.max_body_bytes (1048576)") && log.contains("max_payload (65536)"),
        "{log}"
    );
    ready_until(&server, 200);
    let big = format!(
        r#"{{"specversion":"1.0","id":"big","source":"/pos/1","type":"order.placed","data":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let batch = format!("[{},{big}]", event("before-big"));
    let (status, body) = server.post(TOKEN, "application/cloudevents-batch+json", &batch);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["limit"], "max_event_bytes", "{body}");
    assert_eq!(body["index"], 1, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("at most 64512 bytes"), "{body}");
    // Not a failure of the log: still ready, and the next request is
    // stored and delivered, the refused batch's first event never.
    ready_until(&server, 200);
    let (status, body) = server.post(TOKEN, "application/cloudevents+json", &event("after"));
    assert_eq!(status, 202, "{body}");
    let seen = server.deliveries_of(&["after"]);
    assert!(
        seen.iter().all(|d| d["event_id"] != "before-big"),
        "{seen:#?}"
    );
    assert!(server.terminate().success());
}
