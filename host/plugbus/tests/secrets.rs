//! Tenants' secrets end to end, through `plugbus serve`: read from the
//! environment and a file at start, given only to the plugins their
//! manifest grants them to, of their own tenant, and never written by the
//! host: the test searches everything the process wrote (its log on
//! stderr, its delivery lines on stdout) and every API answer for the
//! values.

use std::time::{Duration, Instant};

use plugbus_artifacts as artifacts;
use support::bearer;

mod support;

const ACME_TOKEN: &str = "acme-publish-token";
const GLOBEX_TOKEN: &str = "globex-publish-token";
const ADMIN_TOKEN: &str = "admin-publish-token";
/// The values, unlike anything else the host writes.
const HOOK_VALUE: &str = "hook-Zq8v2KpX7mWc";
const SMTP_VALUE: &str = "smtp-Lr4nT9yBf3Hd";

/// Writes `name` (the secret-probe fixture, with `manifest`) for `tenant`.
fn probe(plugins: &std::path::Path, tenant: &str, name: &str, manifest: &str) {
    let dir = plugins.join(tenant);
    std::fs::create_dir_all(&dir).expect("tenant directory");
    std::fs::copy(
        artifacts::FIXTURE_SECRET_PROBE,
        dir.join(format!("{name}.wasm")),
    )
    .expect("copy");
    std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("manifest");
}

/// The `secret.seen` reports `plugin` of `tenant` emitted, newest first.
fn reports(server: &support::Server, tenant: &str, plugin: &str, token: &str) -> Vec<String> {
    let (status, body) = server.curl(
        &format!("/v1/tenants/{tenant}/plugins/{plugin}/emits"),
        &["-H", &bearer(token)],
    );
    assert_eq!(status, 200, "{body}");
    body["emits"]
        .as_array()
        .expect("emits")
        .iter()
        .map(|e| {
            // The API gives text that is not one JSON text in base64.
            assert_eq!(e["data"]["encoding"], "base64", "{e}");
            unbase64(e["data"]["value"].as_str().unwrap_or_default())
        })
        .collect()
}

/// Standard base64, padded, decoded to text.
fn unbase64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn secrets_reach_granted_plugins_only_and_are_never_written() {
    let plugins = tempfile::tempdir().expect("plugins");
    let data = tempfile::tempdir().expect("data");
    let grant = "subscribe = [\"probe.*\"]\n[retry]\nmax_attempts = 1\n[secrets]\n";
    probe(
        plugins.path(),
        "acme-pos",
        "granted",
        &format!("{grant}grant = [\"webhook_token\", \"smtp_password\"]\n"),
    );
    probe(
        plugins.path(),
        "acme-pos",
        "ungranted",
        "subscribe = [\"probe.*\"]\n[retry]\nmax_attempts = 1\n",
    );
    probe(
        plugins.path(),
        "globex-retail",
        "granted",
        &format!("{grant}grant = [\"webhook_token\"]\n"),
    );
    let smtp_file = data.path().join("smtp-secret");
    std::fs::write(&smtp_file, format!("{SMTP_VALUE}\n")).expect("secret file");
    let hash = plugbus::config::hash_token;
    let config = data.path().join("plugbus.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             plugins_dir = \"{}\"\n\
             data_dir = \"{}\"\n\
             [admin]\ntoken_sha256 = \"{}\"\n\
             [tenants.acme-pos]\ntoken_sha256 = \"{}\"\n\
             [tenants.acme-pos.secrets]\n\
             webhook_token = {{ env = \"PLUGBUS_TEST_ACME_HOOK\" }}\n\
             smtp_password = {{ file = \"{}\" }}\n\
             [tenants.globex-retail]\ntoken_sha256 = \"{}\"\n",
            plugins.path().display(),
            data.path().join("data").display(),
            hash(ADMIN_TOKEN),
            hash(ACME_TOKEN),
            smtp_file.display(),
            hash(GLOBEX_TOKEN),
        ),
    )
    .expect("write the configuration");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plugbus"));
    command.env("PLUGBUS_TEST_ACME_HOOK", HOOK_VALUE);
    // Everything the host logs, down to debug.
    command.env("RUST_LOG", "debug");
    let server = support::Server::start_command(command, &config);

    // globex-retail has no secret `webhook_token`: its plugin is told at load.
    server.log_until(|log| {
        log.contains("grants it secret webhook_token, which tenant globex-retail does not have")
    });

    let event = |id: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/pos","type":"probe.read","datacontenttype":"text/plain","data":"{data}"}}"#
        )
    };
    let names = "webhook_token smtp_password";
    for (token, id, data) in [
        (ACME_TOKEN, "a-1", names.to_owned()),
        (ACME_TOKEN, "a-2", format!("{names} fail")),
        (GLOBEX_TOKEN, "g-1", names.to_owned()),
    ] {
        let (status, body) = server.post(token, "application/cloudevents+json", &event(id, &data));
        assert_eq!(status, 202, "{body}");
    }
    let lines = server.deliveries_until(Duration::from_secs(60), |seen| {
        seen.iter().filter(|d| d["type"] == "probe.read").count() == 5
    });

    // The granted plugin read both values; the ungranted one of the same
    // tenant, and the other tenant's plugin granted the name, read none.
    let both = format!(
        "webhook_token={}\nsmtp_password={}\n",
        hex(HOOK_VALUE),
        hex(SMTP_VALUE)
    );
    // (A failed delivery's emits are dropped: a-2's are not there.)
    let granted = reports(&server, "acme-pos", "granted", ACME_TOKEN);
    assert_eq!(granted, [both], "{lines:#?}");
    let none = "webhook_token=none\nsmtp_password=none\n";
    assert_eq!(
        reports(&server, "acme-pos", "ungranted", ACME_TOKEN),
        [none]
    );
    assert_eq!(
        reports(&server, "globex-retail", "granted", GLOBEX_TOKEN),
        [none]
    );

    // The failure it returned holding the values went to the dead letters
    // scrubbed.
    let base = "/v1/tenants/acme-pos/plugins/granted";
    let acme = bearer(ACME_TOKEN);
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let (status, body) = server.curl(&format!("{base}/dead-letters"), &["-H", &acme]);
        assert_eq!(status, 200, "{body}");
        if body["dead_letters"][0]["seq"].is_u64() {
            break body;
        }
        assert!(Instant::now() < deadline, "no dead letter: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let message = dead["dead_letters"][0]["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        message, "asked to fail; the secrets are [secret:webhook_token] and [secret:smtp_password]",
        "{dead}"
    );

    // Every answer of the API about the tenants, its plugins and their
    // failures.
    let admin = bearer(ADMIN_TOKEN);
    let mut answers = vec![dead.to_string()];
    for (path, auth) in [
        ("/v1/admin/plugins", &admin),
        ("/v1/admin/tenants", &admin),
        ("/v1/tenants/acme-pos/plugins", &acme),
        ("/v1/tenants/acme-pos/failures", &acme),
        ("/v1/tenants/acme-pos/plugins/granted/state", &acme),
        ("/v1/whoami", &acme),
        ("/readyz", &admin),
        ("/metrics", &admin),
    ] {
        let (status, body) = server.curl(path, &["-H", auth]);
        assert!(status < 500, "{path}: {status} {body}");
        answers.push(body.to_string());
    }

    // What the host logged: the plugin's log lines and output arrived,
    // scrubbed.
    let log = server.log_until(|log| {
        log.contains("secret webhook_token is [secret:webhook_token]")
            && log.contains("stdout: secret smtp_password is [secret:smtp_password]")
            && log.contains("stderr: secret webhook_token is [secret:webhook_token]")
    });
    let stdout: Vec<String> = lines.iter().map(ToString::to_string).collect();
    let stdout = stdout.join("\n");
    assert!(
        stdout.contains("[secret:webhook_token]"),
        "the failure is in the delivery lines, scrubbed: {stdout}"
    );
    // The status command of the CLI, as an operator runs it.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["status", "--url", &server.url])
        .env("PLUGBUS_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run plugbus status");
    let status = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    for value in [HOOK_VALUE, SMTP_VALUE] {
        for (what, text) in [
            ("the log (stderr)", &log),
            ("the delivery lines (stdout)", &stdout),
            ("plugbus status", &status),
        ] {
            assert!(!text.contains(value), "{what} holds a secret:\n{text}");
        }
        for answer in &answers {
            assert!(
                !answer.contains(value),
                "an API answer holds a secret: {answer}"
            );
        }
    }
}
