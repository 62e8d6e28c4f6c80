//! Builds every plugin crate under `plugins/examples` and `plugins/fixtures`
//! for `wasm32-wasip2`, in one `cargo build` into `target/guests` (a target
//! directory of its own, so the outer build's lock is not contended and the
//! xtask shares the result), and the benchmark peers under `plugins/peers`
//! (plugins of other hosts) for their own target, and generates the paths of
//! the components and modules.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/js.rs"]
mod js;
#[path = "build/python.rs"]
mod python;

/// The target of plugbus plugins.
const TARGET: &str = "wasm32-wasip2";
/// The target of the peers: Extism's Rust PDK builds core modules for it.
const PEER_TARGET: &str = "wasm32-unknown-unknown";

struct Plugin {
    package: String,
    fixture: bool,
    target: &'static str,
}

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("plugins/artifacts lives two levels below the workspace root")
        .to_owned();
    // The guests' sources, and the workspace's manifest and lock file (its
    // release profile and the versions of the guests' dependencies).
    for watched in [
        "wit",
        "guest-sdk",
        "plugins/examples",
        "plugins/fixtures",
        "plugins/peers",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let mut plugins = discover(&workspace.join("plugins/examples"), false, TARGET);
    plugins.extend(discover(&workspace.join("plugins/fixtures"), true, TARGET));
    let peers = discover(&workspace.join("plugins/peers"), false, PEER_TARGET);

    let target_dir = workspace.join("target/guests");
    for (target, group) in [(TARGET, &plugins), (PEER_TARGET, &peers)] {
        ensure_target(target);
        build(&workspace, &target_dir, target, group);
    }
    plugins.extend(peers);

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut generated = python::extend(&workspace, generate(&target_dir, &plugins));
    js::build_and_generate(&workspace, &mut generated);
    std::fs::write(out.join("artifacts.rs"), generated)
        .expect("write the generated artifacts file");
}

/// The plugin crates directly under `dir`, sorted by package name, to be
/// built for `target`.
fn discover(dir: &Path, fixture: bool, target: &'static str) -> Vec<Plugin> {
    let mut plugins = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let manifest = entry
            .expect("read a directory entry")
            .path()
            .join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let parsed: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let package = parsed
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_else(|| panic!("{}: no package name", manifest.display()))
            .to_owned();
        plugins.push(Plugin {
            package,
            fixture,
            target,
        });
    }
    plugins.sort_by(|a, b| a.package.cmp(&b.package));
    plugins
}

/// Installs the Rust target `target` with rustup when it is missing.
fn ensure_target(target: &str) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib").join(target).exists());
    if installed {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added,
        "the Rust target {target} is not installed, and installing it with rustup failed \
         (or rustup is missing): run `rustup target add {target}` and build again"
    );
}

fn build(workspace: &Path, target_dir: &Path, target: &str, plugins: &[Plugin]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    for plugin in plugins {
        command.args(["-p", &plugin.package]);
    }
    // The outer build's settings are not the guests': clippy's wrapper,
    // host RUSTFLAGS, the jobserver of the outer cargo, and what cargo tells
    // this build script about the host target (`CARGO_CFG_UNIX`, …, which the
    // nested cargo would not overwrite for wasm32 and would leak into the
    // guests' build scripts) stay out.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("CARGO_CFG_") || name.starts_with("CARGO_FEATURE_") {
            command.env_remove(&var);
        }
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_LINKER",
        "__CARGO_FIX_PLZ",
    ] {
        command.env_remove(var);
    }
    command.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest plugins: {e}"));
    assert!(
        status.success(),
        "building the guest plugins for {target} failed"
    );
}

fn generate(target_dir: &Path, plugins: &[Plugin]) -> String {
    let mut out = String::new();
    let path_of = |p: &Plugin| {
        target_dir
            .join(p.target)
            .join("release")
            .join(format!("{}.wasm", p.package.replace('-', "_")))
    };
    for plugin in plugins {
        let path = path_of(plugin);
        assert!(
            path.exists(),
            "the build did not produce {}",
            path.display()
        );
        let constant = plugin.package.to_uppercase().replace('-', "_");
        writeln!(
            out,
            "/// The {} of the `{}` plugin.\npub const {constant}: &str = {:?};",
            if plugin.target == TARGET {
                "component"
            } else {
                "core module (for another host)"
            },
            plugin.package,
            path.display().to_string()
        )
        .expect("write to a string");
    }
    let list = |fixture: bool, strip: bool| {
        plugins
            .iter()
            .filter(|p| p.fixture == fixture && p.target == TARGET)
            .map(|p| {
                let name = if strip {
                    p.package.trim_start_matches("fixture-")
                } else {
                    &p.package
                };
                format!("({name:?}, {:?}),", path_of(p).display().to_string())
            })
            .collect::<String>()
    };
    writeln!(
        out,
        "/// The example plugins, by package name.\npub const EXAMPLES: &[(&str, &str)] = &[{}];",
        list(false, false)
    )
    .expect("write to a string");
    writeln!(
        out,
        "/// The test fixtures, by name (the package name without `fixture-`).\npub const FIXTURES: &[(&str, &str)] = &[{}];",
        list(true, true)
    )
    .expect("write to a string");
    let all = plugins
        .iter()
        .filter(|p| p.target == TARGET)
        .map(|p| format!("({:?}, {:?}),", p.package, path_of(p).display().to_string()))
        .collect::<String>();
    writeln!(
        out,
        "/// Every plugin, by package name.\npub const ALL: &[(&str, &str)] = &[{all}];"
    )
    .expect("write to a string");
    let calls = plugins
        .iter()
        .filter(|p| p.fixture)
        .map(|p| {
            format!(
                "$mac!({});",
                p.package.trim_start_matches("fixture-").replace('-', "_")
            )
        })
        .collect::<String>();
    writeln!(
        out,
        "/// Calls `$mac!(name)` for every fixture, so a test file can require a test per fixture.\n#[macro_export]\nmacro_rules! for_each_fixture {{ ($mac:ident) => {{ {calls} }}; }}"
    )
    .expect("write to a string");
    out
}
