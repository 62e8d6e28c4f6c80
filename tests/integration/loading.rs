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
