//! `cargo xtask new-plugin`, followed as its README says: the crate it
//! writes in a folder outside the repository passes `cargo test`, builds
//! for `wasm32-wasip2` as `<name with underscores>.wasm`, and loads and
//! runs in a host with the manifest it came with.
//!
//! Both builds use one target directory, `target/scaffold-test`, kept
//! between runs so that the plugin's dependencies are built once, and the
//! crate's copy of the workspace's `Cargo.lock`, so that they are the
//! versions already downloaded (the builds are `--offline`).

use std::path::{Path, PathBuf};
use std::process::Command;

use plugbus::{Event, Host, HostConfig, Outcome};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

/// Runs `cargo ARGS` in `dir` as a plugin author would, with the shared
/// target directory, without what the outer `cargo test` set for itself
/// (its flags and target directory are not the plugin's).
fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(dir)
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", workspace().join("target/scaffold-test"));
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo {args:?}: {e}"));
    assert!(
        output.status.success(),
        "cargo {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn order_placed(id: &str, total_cents: u64) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": "order.placed",
        "subject": id,
        "datacontenttype": "application/json",
        "tenant": "acme-pos",
        "data": { "order_id": id, "total_cents": total_cents, "items": [{ "sku": "sku-1", "quantity": 1 }] },
    }))
    .expect("a valid event")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_plugin_tests_builds_and_runs_in_a_host() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().join("my-plugin");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("new-plugin")
        .arg(&dir)
        .output()
        .expect("run xtask");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "new-plugin failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("release/my_plugin.wasm"), "{stdout}");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "my-plugin.toml",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(
        readme.contains("target/wasm32-wasip2/release/my_plugin.wasm"),
        "{readme}"
    );

    cargo(&dir, &["test"]);
    cargo(&dir, &["build", "--target", "wasm32-wasip2", "--release"]);
    let wasm = workspace().join("target/scaffold-test/wasm32-wasip2/release/my_plugin.wasm");
    assert!(wasm.is_file(), "{} was not built", wasm.display());

    // Into a plugins directory, as the README says.
    let plugins = temp.path().join("plugins");
    let tenant = plugins.join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("create the tenant folder");
    std::fs::copy(dir.join("my-plugin.toml"), tenant.join("my-plugin.toml")).expect("copy");
    std::fs::copy(&wasm, tenant.join("my-plugin.wasm")).expect("copy");

    let host = Host::new(HostConfig::default()).expect("a host");
    let report = host.load_dir(&plugins).expect("load the plugins");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(report.loaded[0].name, "my-plugin");

    let small = host
        .publish(order_placed("order-1", 450))
        .await
        .expect("published");
    let large = host
        .publish(order_placed("order-2", 12_500))
        .await
        .expect("published");
    for (report, types) in [
        (&small, &["order.counted"][..]),
        (&large, &["order.counted", "order.large"][..]),
    ] {
        let [delivery] = &report.deliveries[..] else {
            panic!("one delivery expected: {:#?}", report.deliveries);
        };
        assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
        let emitted: Vec<_> = delivery.emitted.iter().map(|e| e.ty.as_str()).collect();
        assert_eq!(emitted, types);
    }
    assert_eq!(
        large.deliveries[0].emitted[0].subject.as_deref(),
        Some("order-2")
    );
    let totals = host
        .state_store()
        .get("acme-pos", "my-plugin", "totals")
        .expect("read the state")
        .expect("the plugin keeps its totals");
    let totals: serde_json::Value = serde_json::from_slice(&totals).expect("JSON");
    assert_eq!(totals, serde_json::json!({ "orders": 2, "cents": 12_950 }));
}
