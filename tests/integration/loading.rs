//! Loading plugins: every refusal names its file and reason, and the other
//! plugins load regardless.

use plugbus::LoadError;
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, host_for};

#[test]
fn broken_plugins_are_refused_and_the_others_load() {
    let dir = PluginsDir::new();
    dir.add("acme-pos", "good", artifacts::FIXTURE_NOOP, None);
    dir.add_bytes(
        "acme-pos",
        "text",
        b"this is not a WebAssembly component\n",
        None,
    );
    dir.add_bytes("acme-pos", "core", b"\0asm\x01\0\0\0", None);
    let component = std::fs::read(artifacts::FIXTURE_NOOP).expect("read");
    // A component cut short, as a file still being written would be.
    dir.add_bytes(
        "acme-pos",
        "partial",
        &component[..component.len() / 2],
        None,
    );
    dir.add(
        "acme-pos",
        "badmanifest",
        artifacts::FIXTURE_NOOP,
        Some("subscribe = [\"*\"]\nretries = 3"),
    );
    dir.add(
        "acme-pos",
        "badlimit",
        artifacts::FIXTURE_NOOP,
        Some("[limits]\nmemory_mib = 100000"),
    );
    dir.add("Acme", "good", artifacts::FIXTURE_NOOP, None);
    dir.add("globex", "Bad_Name", artifacts::FIXTURE_NOOP, None);
    dir.add("globex", "fine", artifacts::FIXTURE_NOOP, None);

    let (host, report) = host_for(&dir);
    let loaded: Vec<_> = report
        .loaded
        .iter()
        .map(|p| format!("{}/{}", p.tenant, p.name))
        .collect();
    assert_eq!(loaded, ["acme-pos/good", "globex/fine"]);
    assert_eq!(host.plugins().len(), 2);

    let find = |file: &str| -> &LoadError {
        report
            .errors
            .iter()
            .find(|e| e.path().ends_with(file))
            .unwrap_or_else(|| panic!("no error for {file}: {:#?}", report.errors))
    };
    assert!(matches!(
        find("acme-pos/text.wasm"),
        LoadError::NotWasm { .. }
    ));
    assert!(matches!(
        find("acme-pos/core.wasm"),
        LoadError::CoreModule { .. }
    ));
    assert!(matches!(
        find("acme-pos/partial.wasm"),
        LoadError::Compile { .. }
    ));
    let manifest = find("acme-pos/badmanifest.toml");
    assert!(matches!(manifest, LoadError::Manifest { .. }));
    assert!(manifest.to_string().contains("retries"), "{manifest}");
    assert!(
        find("acme-pos/badlimit.toml")
            .to_string()
            .contains("memory_mib")
    );
    assert!(matches!(find("Acme"), LoadError::TenantName { .. }));
    assert!(matches!(
        find("globex/Bad_Name.wasm"),
        LoadError::PluginName { .. }
    ));
    assert_eq!(report.errors.len(), 7, "{:#?}", report.errors);
    for error in &report.errors {
        let file = error
            .path()
            .file_name()
            .expect("a file name")
            .to_string_lossy();
        assert!(
            error.to_string().contains(file.as_ref()),
            "{error} names {file}"
        );
    }
}

#[test]
fn a_missing_plugins_directory_is_an_error() {
    let host = plugbus::Host::new(plugbus::HostConfig::default()).expect("host");
    let err = host
        .load_dir("/nonexistent/plugbus-plugins".as_ref())
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/plugbus-plugins"),
        "{err}"
    );
}

#[test]
fn versions_follow_the_content() {
    let dir = PluginsDir::new();
    dir.add("a", "one", artifacts::FIXTURE_NOOP, None);
    dir.add("a", "two", artifacts::FIXTURE_NOOP, None);
    dir.add(
        "a",
        "three",
        artifacts::FIXTURE_NOOP,
        Some("subscribe = [\"x\"]"),
    );
    dir.add("a", "four", artifacts::AUDIT_LOG, None);
    let (_, report) = host_for(&dir);
    let version = |name: &str| {
        report
            .loaded
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.version.clone())
            .expect("loaded")
    };
    assert_eq!(version("one"), version("two"));
    assert_ne!(version("one"), version("three"));
    assert_ne!(version("one"), version("four"));
}

/// The manifest of globex's plugin, with its secret.
const SECRET: &str = "subscribe = [\"order.*\"]\n[config]\ngreeting = \"globex-secret\"\n";

fn symlink(target: &str, link: &std::path::Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("link {} -> {target}: {e}", link.display()));
}

/// The error reported for the file whose path ends with `file`.
fn error_for<'a>(report: &'a plugbus::LoadReport, file: &str) -> &'a LoadError {
    report
        .errors
        .iter()
        .find(|e| e.path().ends_with(file))
        .unwrap_or_else(|| panic!("no error for {file}: {:#?}", report.errors))
}

fn loaded(report: &plugbus::LoadReport) -> Vec<String> {
    report
        .loaded
        .iter()
        .map(|p| format!("{}/{}", p.tenant, p.name))
        .collect()
}

/// `acme/spy.toml -> ../globex/secret.toml`: the plugin is refused, so
/// the other tenant's configuration is never served to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_linked_into_another_tenant_is_refused() {
    let dir = PluginsDir::new();
    dir.add(
        "globex",
        "secret",
        artifacts::FIXTURE_PLAIN_BINDGEN,
        Some(SECRET),
    );
    dir.add("acme", "spy", artifacts::FIXTURE_PLAIN_BINDGEN, None);
    symlink("../globex/secret.toml", &dir.path().join("acme/spy.toml"));
    let (host, report) = host_for(&dir);
    assert_eq!(loaded(&report), ["globex/secret"]);
    let error = error_for(&report, "acme/spy.toml");
    assert!(matches!(error, LoadError::OutsideTenant { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("acme/spy.toml"), "{message}");
    assert!(
        message.contains("leaves the tenant folder acme/"),
        "{message}"
    );
    assert!(message.contains("../globex/secret.toml"), "{message}");
    // Nothing of acme's sees the secret; globex's own plugin still does.
    let acme = plugbus_tests::publish(&host, "acme", "order.created", "a-1").await;
    assert!(acme.is_empty(), "{acme:#?}");
    let globex = plugbus_tests::publish(&host, "globex", "order.created", "g-1").await;
    assert_eq!(globex.len(), 1);
    assert_eq!(
        globex[0].emitted[0].subject.as_deref(),
        Some("globex-secret")
    );
}

/// A component that is a link out of its tenant's folder — into another
/// tenant's, or anywhere by an absolute path — is refused.
#[test]
fn a_component_linked_outside_its_tenant_is_refused() {
    let dir = PluginsDir::new();
    let theirs = dir.add("globex", "real", artifacts::FIXTURE_NOOP, None);
    std::fs::create_dir_all(dir.path().join("acme")).expect("acme");
    symlink("../globex/real.wasm", &dir.path().join("acme/copycat.wasm"));
    symlink(
        &theirs.to_string_lossy(),
        &dir.path().join("acme/absolute.wasm"),
    );
    let (_, report) = host_for(&dir);
    assert_eq!(loaded(&report), ["globex/real"]);
    for file in ["acme/copycat.wasm", "acme/absolute.wasm"] {
        let error = error_for(&report, file);
        assert!(matches!(error, LoadError::OutsideTenant { .. }), "{error}");
        assert!(error.to_string().contains(file), "{error}");
    }
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
}

/// Relative links that stay inside the tenant's folder are followed: a
/// component and a manifest kept in a subfolder and linked into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_inside_the_tenant_folder_are_followed() {
    let dir = PluginsDir::new();
    let acme = dir.path().join("acme");
    std::fs::create_dir_all(acme.join("releases/v2")).expect("releases");
    std::fs::copy(
        artifacts::FIXTURE_PLAIN_BINDGEN,
        acme.join("releases/v2/greeter.wasm"),
    )
    .expect("copy");
    std::fs::write(
        acme.join("releases/v2/greeter.toml"),
        "subscribe = [\"order.*\"]\n[config]\ngreeting = \"acme-own\"\n",
    )
    .expect("manifest");
    symlink("releases/v2/greeter.wasm", &acme.join("greeter.wasm"));
    symlink("releases/v2/greeter.toml", &acme.join("greeter.toml"));
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(loaded(&report), ["acme/greeter"]);
    let deliveries = plugbus_tests::publish(&host, "acme", "order.created", "a-1").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].emitted[0].subject.as_deref(),
        Some("acme-own")
    );
}

/// A tenant folder that is a symbolic link is refused, even one that
/// points at another tenant's folder inside the plugins directory.
#[test]
fn a_tenant_folder_that_is_a_link_is_refused() {
    let dir = PluginsDir::new();
    dir.add("globex", "real", artifacts::FIXTURE_NOOP, Some(SECRET));
    symlink("globex", &dir.path().join("acme"));
    let (host, report) = host_for(&dir);
    assert_eq!(loaded(&report), ["globex/real"]);
    let error = error_for(&report, "acme");
    assert!(matches!(error, LoadError::TenantSymlink { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("a tenant folder may not be a symbolic link"),
        "{error}"
    );
    assert!(host.plugin("acme", "real").is_none());
}

/// A FIFO where a manifest (or a component) belongs is refused without
/// waiting for a writer: the load returns.
#[test]
fn a_fifo_is_refused_and_the_load_returns() {
    let dir = PluginsDir::new();
    dir.add("acme", "piped", artifacts::FIXTURE_NOOP, None);
    dir.add("acme", "fine", artifacts::FIXTURE_NOOP, None);
    for fifo in ["acme/piped.toml", "acme/pipe.wasm"] {
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join(fifo))
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {fifo}");
    }
    // The load runs on a thread of its own, so that a load that blocks
    // fails this test instead of hanging it.
    let path = dir.path().to_owned();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let host = plugbus::Host::new(plugbus::HostConfig::default()).expect("host");
        let report = host.load_dir(&path).expect("load");
        let _ = send.send(report);
    });
    let report = receive
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the load returned instead of waiting on a FIFO");
    assert_eq!(loaded(&report), ["acme/fine"]);
    for fifo in ["acme/piped.toml", "acme/pipe.wasm"] {
        let error = error_for(&report, fifo);
        assert!(
            matches!(error, LoadError::NotRegularFile { what: "a FIFO", .. }),
            "{error}"
        );
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
}

/// A manifest of `max_manifest_bytes` loads; one byte more is refused,
/// naming the file, the limit and the setting.
#[test]
fn a_manifest_one_byte_over_its_limit_is_refused() {
    let limit = plugbus::HostConfig::default().max_manifest_bytes;
    assert_eq!(limit, 64 * 1024, "the documented default");
    let padded = |len: u64| {
        let mut text = String::from("subscribe = [\"order.*\"]\n#");
        let len = usize::try_from(len).expect("small");
        text.push_str(&"x".repeat(len - text.len() - 1));
        text.push('\n');
        assert_eq!(text.len(), len);
        text
    };
    let dir = PluginsDir::new();
    dir.add(
        "acme",
        "exact",
        artifacts::FIXTURE_NOOP,
        Some(&padded(limit)),
    );
    dir.add(
        "acme",
        "over",
        artifacts::FIXTURE_NOOP,
        Some(&padded(limit + 1)),
    );
    let (_, report) = host_for(&dir);
    assert_eq!(loaded(&report), ["acme/exact"]);
    let error = error_for(&report, "acme/over.toml");
    assert!(
        matches!(error, LoadError::TooLarge { size, limit: l, .. } if *size == limit + 1 && *l == limit),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("65536"), "{message}");
    assert!(message.contains("limits.max.manifest_bytes"), "{message}");
    assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
}

/// A component over `max_plugin_bytes` is refused on the opened file.
#[test]
fn a_component_over_its_limit_is_refused() {
    let bytes = std::fs::read(artifacts::FIXTURE_NOOP).expect("read");
    let dir = PluginsDir::new();
    dir.add_bytes("acme", "exact", &bytes, None);
    dir.add_bytes(
        "acme",
        "over",
        &plugbus_tests::with_custom_section(&bytes, "pad", 8),
        None,
    );
    let limit = bytes.len() as u64;
    let config = plugbus::HostConfig {
        max_plugin_bytes: limit,
        ..plugbus::HostConfig::default()
    };
    let (_, report) = plugbus_tests::host_with(config, &dir);
    assert_eq!(loaded(&report), ["acme/exact"]);
    let error = error_for(&report, "acme/over.wasm");
    assert!(matches!(error, LoadError::TooLarge { .. }), "{error}");
    assert!(
        error.to_string().contains("limits.max.plugin_bytes"),
        "{error}"
    );
}

/// Fuel, memory and time at the operator's default ceilings load; one
/// over each is refused, naming the key, the value and the ceiling.
#[test]
fn limits_at_the_ceiling_load_and_one_over_is_refused() {
    let dir = PluginsDir::new();
    let at = [
        ("fuel", "fuel = 1_000_000_000"),
        ("memory", "memory_mib = 256"),
        ("timeout", "timeout_ms = 30_000"),
    ];
    let over = [
        (
            "fuel",
            "fuel = 1_000_000_001",
            "limits.fuel is 1000000001; the operator's ceiling is 1000000000 (limits.max.fuel in plugbus.toml)",
        ),
        (
            "memory",
            "memory_mib = 257",
            "limits.memory_mib is 257; the operator's ceiling is 256 (limits.max.memory_mib in plugbus.toml)",
        ),
        (
            "timeout",
            "timeout_ms = 30_001",
            "limits.timeout_ms is 30001; the operator's ceiling is 30000 (limits.max.timeout_ms in plugbus.toml)",
        ),
    ];
    for (name, line) in at {
        let manifest = format!("[limits]\n{line}\n");
        dir.add(
            "acme",
            &format!("at-{name}"),
            artifacts::FIXTURE_NOOP,
            Some(&manifest),
        );
    }
    for (name, line, _) in over {
        let manifest = format!("[limits]\n{line}\n");
        dir.add(
            "acme",
            &format!("over-{name}"),
            artifacts::FIXTURE_NOOP,
            Some(&manifest),
        );
    }
    // What the issue saw load.
    dir.add(
        "acme",
        "greedy",
        artifacts::FIXTURE_NOOP,
        Some("[limits]\nfuel = 18446744073709551615\nmemory_mib = 4096\ntimeout_ms = 3600000\n"),
    );
    let (_, report) = host_for(&dir);
    assert_eq!(
        loaded(&report),
        ["acme/at-fuel", "acme/at-memory", "acme/at-timeout"]
    );
    for (name, _, message) in over {
        let error = error_for(&report, &format!("acme/over-{name}.toml"));
        assert!(matches!(error, LoadError::LimitCeiling { .. }), "{error}");
        assert!(error.to_string().ends_with(message), "{error}");
    }
    let greedy = error_for(&report, "acme/greedy.toml");
    assert!(
        greedy.to_string().ends_with(
            "limits.fuel is 18446744073709551615; the operator's ceiling is 1000000000 (limits.max.fuel in plugbus.toml)"
        ),
        "{greedy}"
    );
    assert_eq!(report.errors.len(), 4, "{:#?}", report.errors);
}

/// Ceilings are the operator's to raise; below the defaults they are a
/// configuration error, not a host that refuses every plugin.
#[test]
fn a_ceiling_below_the_default_is_a_configuration_error() {
    let mut config = plugbus::HostConfig::default();
    config.max_limits.fuel = config.default_limits.fuel - 1;
    let Err(error) = plugbus::Host::new(config) else {
        panic!("a ceiling below the default was accepted");
    };
    let message = error.to_string();
    assert!(message.contains("limits.max.fuel"), "{message}");
    assert!(message.contains("limits.fuel"), "{message}");

    let mut config = plugbus::HostConfig::default();
    config.max_limits.fuel = u64::MAX;
    config.max_limits.timeout = std::time::Duration::from_secs(3600);
    config.max_limits.memory_bytes = config.default_limits.memory_bytes;
    assert!(
        plugbus::Host::new(config).is_ok(),
        "ceilings at or above the defaults"
    );

    let mut config = plugbus::HostConfig::default();
    config.tenant_max_plugins.insert("Not A Tenant".into(), 3);
    let Err(error) = plugbus::Host::new(config) else {
        panic!("a quota for an invalid tenant name was accepted");
    };
    assert!(error.to_string().contains("Not A Tenant"), "{error}");
}

/// The operator raises a ceiling, and what was refused loads.
#[test]
fn a_raised_ceiling_admits_what_the_default_refuses() {
    let dir = PluginsDir::new();
    dir.add(
        "acme",
        "long",
        artifacts::FIXTURE_NOOP,
        Some("[limits]\ntimeout_ms = 60_000\nfuel = 5_000_000_000\n"),
    );
    let (_, report) = host_for(&dir);
    assert!(loaded(&report).is_empty());
    let mut config = plugbus::HostConfig::default();
    config.max_limits.timeout = std::time::Duration::from_secs(60);
    config.max_limits.fuel = 5_000_000_000;
    let (_, report) = plugbus_tests::host_with(config, &dir);
    assert_eq!(loaded(&report), ["acme/long"], "{:#?}", report.errors);
}

/// A tenant's quota of plugins: the default 100 load and the 101st by name
/// is refused, naming the quota; a per-tenant quota overrides it.
#[test]
fn plugins_past_a_tenants_quota_are_refused() {
    let dir = PluginsDir::new();
    let quota = plugbus::HostConfig::default().max_plugins_per_tenant;
    assert_eq!(quota, 100, "the documented default");
    for i in 0..=quota {
        dir.add("acme", &format!("p{i:03}"), artifacts::FIXTURE_NOOP, None);
    }
    for name in ["a", "b", "c"] {
        dir.add("small", name, artifacts::FIXTURE_NOOP, None);
    }
    let mut config = plugbus::HostConfig::default();
    config.tenant_max_plugins.insert("small".into(), 2);
    let (host, report) = plugbus_tests::host_with(config, &dir);
    let acme = report.loaded.iter().filter(|p| p.tenant == "acme").count();
    assert_eq!(acme, 100);
    assert!(host.plugin("acme", "p099").is_some());
    assert!(host.plugin("acme", "p100").is_none());
    let error = error_for(&report, "acme/p100.wasm");
    assert!(
        matches!(error, LoadError::Quota { quota: 100, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("its quota of 100 plugins (quotas.max_plugins in plugbus.toml)"),
        "{error}"
    );
    assert!(host.plugin("small", "b").is_some());
    let error = error_for(&report, "small/c.wasm");
    assert!(
        error
            .to_string()
            .contains("its quota of 2 plugins (tenants.small.max_plugins in plugbus.toml)"),
        "{error}"
    );
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
}
