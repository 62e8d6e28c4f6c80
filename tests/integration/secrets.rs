//! Tenants' secrets in the host: a plugin reads those of its tenant that
//! its manifest grants it, and nothing else; their values never leave in a
//! failure. (`host/plugbus/tests/secrets.rs` runs `plugbus serve` and
//! searches everything it writes for them.)

use plugbus::secrets::{SecretName, SecretValue, Secrets, TenantSecrets};
use plugbus::{FailureKind, HostConfig};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, failure, host_with};

const TOKEN: &str = "tok-Hq2Wz8Lm";
const PASSWORD: &str = "pw-Nc5Rt1Vx";

/// acme-pos has `webhook_token` and `smtp_password`; globex-retail has
/// only `other`.
fn config() -> HostConfig {
    let secret = |name: &str, value: &str| {
        (
            SecretName::parse(name).expect("a valid name"),
            SecretValue::new(value.to_owned()).expect("a valid value"),
        )
    };
    let mut secrets = TenantSecrets::new();
    secrets.insert(
        "acme-pos",
        [
            secret("webhook_token", TOKEN),
            secret("smtp_password", PASSWORD),
        ]
        .into_iter()
        .collect::<Secrets>(),
    );
    secrets.insert(
        "globex-retail",
        [secret("other", "other-value")]
            .into_iter()
            .collect::<Secrets>(),
    );
    HostConfig {
        secrets,
        ..HostConfig::default()
    }
}

/// What `plugin` of `tenant` reports for an event asking for `names`:
/// each name's value (decoded from the probe's hex) or `None`.
fn probe(
    host: &plugbus::Host,
    tenant: &str,
    plugin: &str,
    names: &str,
) -> Vec<(String, Option<String>)> {
    let plugin = host.plugin(tenant, plugin).expect("loaded");
    // Blocking: the plugin's output goes through WASI's own runtime.
    let (d, emitted) = tokio::task::block_in_place(|| {
        plugin.deliver(&event(
            tenant,
            "probe.read",
            "e-1",
            serde_json::json!(names),
        ))
    })
    .expect("a valid event");
    assert!(d.outcome.is_handled(), "{d:#?}");
    assert_eq!(emitted.len(), 1, "{d:#?}");
    String::from_utf8_lossy(emitted[0].data())
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("name=value");
            let value = (value != "none").then(|| {
                let bytes: Vec<u8> = (0..value.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&value[i..i + 2], 16).expect("hex"))
                    .collect();
                String::from_utf8(bytes).expect("UTF-8")
            });
            (name.to_owned(), value)
        })
        .collect()
}

/// The `secret-probe` fixture: a plugin reads the secrets of its tenant
/// that its manifest grants it, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn secret_probe() {
    let dir = PluginsDir::new();
    let grant = |names: &str| {
        Some(format!(
            "subscribe = [\"probe.*\"]\n[secrets]\ngrant = [{names}]\n"
        ))
    };
    dir.add(
        "acme-pos",
        "granted",
        artifacts::FIXTURE_SECRET_PROBE,
        grant("\"webhook_token\", \"smtp_password\"").as_deref(),
    );
    dir.add(
        "acme-pos",
        "partly",
        artifacts::FIXTURE_SECRET_PROBE,
        grant("\"webhook_token\"").as_deref(),
    );
    dir.add(
        "acme-pos",
        "ungranted",
        artifacts::FIXTURE_SECRET_PROBE,
        Some("subscribe = [\"probe.*\"]\n"),
    );
    // Granted a name its tenant does not have: it loads, and reads none.
    dir.add(
        "globex-retail",
        "granted",
        artifacts::FIXTURE_SECRET_PROBE,
        grant("\"webhook_token\", \"other\"").as_deref(),
    );
    let (host, report) = host_with(config(), &dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let names = "webhook_token smtp_password other";
    let some = |v: &str| Some(v.to_owned());
    let seen = |pairs: [(&str, Option<String>); 3]| {
        pairs
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        probe(&host, "acme-pos", "granted", names),
        seen([
            ("webhook_token", some(TOKEN)),
            ("smtp_password", some(PASSWORD)),
            ("other", None),
        ])
    );
    assert_eq!(
        probe(&host, "acme-pos", "partly", names),
        seen([
            ("webhook_token", some(TOKEN)),
            ("smtp_password", None),
            ("other", None),
        ])
    );
    assert_eq!(
        probe(&host, "acme-pos", "ungranted", names),
        seen([
            ("webhook_token", None),
            ("smtp_password", None),
            ("other", None)
        ])
    );
    assert_eq!(
        probe(&host, "globex-retail", "granted", names),
        seen([
            ("webhook_token", None),
            ("smtp_password", None),
            ("other", some("other-value")),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_scrubbed_from_failures() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "granted",
        artifacts::FIXTURE_SECRET_PROBE,
        Some("subscribe = [\"probe.*\"]\n[secrets]\ngrant = [\"webhook_token\", \"smtp_password\"]\n"),
    );
    let (host, report) = host_with(config(), &dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plugin = host.plugin("acme-pos", "granted").expect("loaded");
    let probe_event = |id: &str| {
        event(
            "acme-pos",
            "probe.read",
            id,
            serde_json::json!("webhook_token smtp_password fail"),
        )
    };
    // Through `handle`.
    let (d, emitted) =
        tokio::task::block_in_place(|| plugin.deliver(&probe_event("f-1"))).expect("a valid event");
    assert!(emitted.is_empty(), "a failed delivery's emits are dropped");
    let f = failure(&d);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert_eq!(
        f.message,
        "asked to fail; the secrets are [secret:webhook_token] and [secret:smtp_password]"
    );
    // And when several are delivered at once.
    let events: Vec<_> = (0..3).map(|i| probe_event(&format!("b-{i}"))).collect();
    let reports = tokio::task::block_in_place(|| plugin.deliver_batch(&events));
    for (d, _) in reports.expect("valid events") {
        let f = failure(&d);
        assert!(
            !f.message.contains(TOKEN) && !f.message.contains(PASSWORD),
            "{f:?}"
        );
    }
}
