//! `plugbus new`, run as a plugin author would.
//!
//! Rust, followed as its README says: the crate it writes in a folder
//! outside the repository passes `cargo test`, builds for `wasm32-wasip2`
//! as `<name with underscores>.wasm`, and loads and runs in a host with the
//! manifest it came with. Both builds use one target directory,
//! `target/scaffold-test`, kept between runs so that the plugin's
//! dependencies are built once, and the crate's copy of the workspace's
//! `Cargo.lock`, so that they are the versions already downloaded (the
//! builds are `--offline`).
//!
//! Python and JavaScript: the files written, with the SDK and the WIT, and
//! no placeholder left (their own tests build and run the templates).

use std::path::{Path, PathBuf};
use std::process::Command;

use plugbus::{Event, Host, HostConfig, Outcome};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("host/plugbus lies two levels below the workspace root")
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
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["new", "my-plugin", "--lang", "rust", "--dir"])
        .arg(&dir)
        .output()
        .expect("run plugbus new");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "plugbus new failed: {stdout}\n{}",
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
        "plugbus-sdk/Cargo.toml",
        "plugbus-sdk/src/lib.rs",
        "wit/plugbus.wit",
        "wit/deps/http.wit",
        "wit/deps/io.wit",
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

/// Runs `plugbus new ARGS` in `cwd`; its status, stdout and stderr.
fn plugbus_new(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .current_dir(cwd)
        .arg("new")
        .args(args)
        .output()
        .expect("run plugbus new");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The files under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).expect("read a directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(dir).expect("below").to_owned());
            }
        }
    }
    files.sort();
    files
}

/// Python and JavaScript: the project is written with the template's
/// files (`.in` dropped, placeholders replaced), the SDK package and the
/// WIT, into ./NAME by default; the project's own native test passes.
#[test]
fn python_and_js_projects_are_written_from_their_templates() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    for (lang, handler, test) in [
        ("python", "app.py", "test_app.py"),
        ("js", "handler.js", "handler.test.js"),
    ] {
        let name = format!("stock-{lang}");
        let (ok, stdout, stderr) = plugbus_new(
            temp.path(),
            &[&name, "--lang", lang, "--tenant", "globex-retail"],
        );
        let dir = temp.path().join(&name);
        assert!(ok, "plugbus new --lang {lang} failed: {stdout}\n{stderr}");
        let files = files_under(&dir);
        for file in [
            handler.to_owned(),
            test.to_owned(),
            format!("{name}.toml"),
            "README.md".to_owned(),
            ".gitignore".to_owned(),
            "wit/plugbus.wit".to_owned(),
            "wit/deps/http.wit".to_owned(),
        ] {
            assert!(
                files.contains(&PathBuf::from(&file)),
                "{lang}: {file} is missing: {files:?}"
            );
        }
        assert!(
            files.iter().any(|f| f.starts_with("plugbus")),
            "{lang}: the SDK package is missing: {files:?}"
        );
        for file in &files {
            assert!(
                file.extension().is_none_or(|e| e != "in"),
                "{lang}: {} keeps its .in",
                file.display()
            );
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            for placeholder in ["{{name}}", "{{tenant}}", "{{crate}}"] {
                assert!(
                    !text.contains(placeholder),
                    "{lang}: {} keeps {placeholder}",
                    file.display()
                );
            }
        }
        let manifest = std::fs::read_to_string(dir.join(format!("{name}.toml"))).expect("manifest");
        assert!(manifest.contains("subscribe"), "{manifest}");
        let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
        assert!(readme.contains(&name), "{readme}");
        assert_eq!(
            std::fs::read(dir.join("wit/plugbus.wit")).expect("the WIT"),
            std::fs::read(workspace().join("wit/plugbus.wit")).expect("the WIT"),
        );
        // Every package the WIT imports, as the workspace has it.
        for entry in std::fs::read_dir(workspace().join("wit/deps")).expect("wit/deps") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().expect("a file name");
            assert_eq!(
                std::fs::read(dir.join("wit/deps").join(name)).ok(),
                std::fs::read(&path).ok(),
                "{lang}: wit/deps/{}",
                name.to_string_lossy()
            );
        }
        // The project's native test passes as written, as its README says
        // to run it.
        let mut native = match lang {
            "python" => {
                let mut c = Command::new("python3");
                c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                    .env("PYTHONPATH", plugbus_artifacts::PYTEST_PATH)
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
            _ => {
                let mut c = Command::new("node");
                c.arg("--test");
                c
            }
        };
        let output = native
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{lang}: the native test could not start: {e}"));
        assert!(
            output.status.success(),
            "{lang}: the new project's native test failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if lang == "js" {
            assert_eq!(
                std::fs::read(dir.join("package-lock.json")).expect("the lock"),
                std::fs::read(workspace().join("guest-sdk/js/package-lock.json"))
                    .expect("the SDK's lock"),
                "the project pins the SDK's build tools"
            );
        }
    }
}

/// What is wrong is named: the name, the language, the directory.
#[test]
fn bad_requests_are_refused_naming_what_is_wrong() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir_all(temp.path().join("full")).expect("create");
    std::fs::write(temp.path().join("full/x"), "x").expect("write");
    for (args, expected) in [
        (
            &["Bad", "--lang", "rust"][..],
            "\"Bad\" is not a valid plugin name",
        ),
        (&["fn", "--lang", "rust"][..], "reserved in Rust"),
        (
            &["9lives", "--lang", "rust"][..],
            "must start with a letter",
        ),
        (&["p", "--lang", "go"][..], "invalid value 'go'"),
        (&["p"][..], "--lang"),
        (&["p", "--lang", "rust", "--tenant", "Acme"][..], "--tenant"),
        (
            &["p", "--lang", "rust", "--dir", "full"][..],
            "is not empty",
        ),
    ] {
        let (ok, stdout, stderr) = plugbus_new(temp.path(), args);
        assert!(!ok, "{args:?}: {stdout}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["full"], "nothing else is written");
}
