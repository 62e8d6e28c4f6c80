//! Builds the JavaScript plugins of `plugins/examples` and
//! `plugins/fixtures` (directories with a `handler.js` and no `Cargo.toml`)
//! into `target/guests/js/<dir>.wasm` with componentize-js, and generates
//! their constants (`EXAMPLE_<DIR>`, `FIXTURE_<DIR>`) and `ALL` entries.
//!
//! The tools are the ones `guest-sdk/js/package-lock.json` pins
//! (componentize-js 0.23.0, jco 1.35.0), installed with `npm ci` into
//! `target/lang-tools/js` when missing or when the lock changed. A component
//! is rebuilt only when its inputs changed (the plugin's files, the SDK, the
//! WIT, the lock): a stamp of their contents sits beside it. The builds run
//! in parallel, one thread per core.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Node.js version componentize-js 0.23.0 needs at least.
const MIN_NODE: (u32, u32) = (20, 19);
/// The tool versions, for messages (the lock pins them).
const TOOLS: &str = "componentize-js 0.23.0 / jco 1.35.0";

/// A JavaScript plugin directory.
struct JsPlugin {
    /// The directory's name, such as `low-stock-alert-js`.
    dir_name: String,
    /// The directory.
    dir: PathBuf,
    /// Whether it is under `plugins/fixtures`.
    fixture: bool,
    /// Where its component goes.
    wasm: PathBuf,
}

/// Builds every JavaScript plugin and appends its constants to `generated`
/// (the text `build.rs` generates), adding its entries to `ALL`.
pub fn build_and_generate(workspace: &Path, generated: &mut String) {
    let mut plugins = Vec::new();
    let out_dir = workspace.join("target/guests/js");
    for (dir, fixture) in [("plugins/examples", false), ("plugins/fixtures", true)] {
        plugins.extend(discover(&workspace.join(dir), fixture, &out_dir));
    }
    if !plugins.is_empty() {
        let tools = ensure_tools(workspace);
        std::fs::create_dir_all(&out_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
        build_all(workspace, &tools, &plugins);
    }
    generate(&plugins, generated);
}

/// The JavaScript plugin directories directly under `dir`, sorted by name.
fn discover(dir: &Path, fixture: bool, out_dir: &Path) -> Vec<JsPlugin> {
    let mut plugins = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return plugins;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("handler.js").is_file() || path.join("Cargo.toml").exists() {
            continue;
        }
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        plugins.push(JsPlugin {
            wasm: out_dir.join(format!("{dir_name}.wasm")),
            dir_name,
            dir: path,
            fixture,
        });
    }
    plugins.sort_by(|a, b| a.dir_name.cmp(&b.dir_name));
    plugins
}

/// Checks Node.js and installs the pinned tools into
/// `target/lang-tools/js` when they are missing or the lock changed;
/// returns that directory.
fn ensure_tools(workspace: &Path) -> PathBuf {
    let version = Command::new("node").arg("--version").output();
    let version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => panic!(
            "building the JavaScript plugins needs Node.js >= {}.{} (`node --version` failed): \
             install Node.js 20.19 or newer and build again",
            MIN_NODE.0, MIN_NODE.1
        ),
    };
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= MIN_NODE,
        "building the JavaScript plugins with {TOOLS} needs Node.js >= {}.{}; `node --version` says {version}",
        MIN_NODE.0,
        MIN_NODE.1
    );
    let sdk = workspace.join("guest-sdk/js");
    let tools = workspace.join("target/lang-tools/js");
    let lock = std::fs::read(sdk.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("read guest-sdk/js/package-lock.json: {e}"));
    let installed_lock = tools.join("package-lock.json");
    let cli = tools.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    if cli.exists() && std::fs::read(&installed_lock).is_ok_and(|l| l == lock) {
        return tools;
    }
    std::fs::create_dir_all(&tools).unwrap_or_else(|e| panic!("create {}: {e}", tools.display()));
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(sdk.join(file), tools.join(file))
            .unwrap_or_else(|e| panic!("copy guest-sdk/js/{file} to {}: {e}", tools.display()));
    }
    let command = format!("npm ci --no-audit --no-fund --prefix {}", tools.display());
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&tools)
        .output();
    match output {
        Ok(o) if o.status.success() => tools,
        Ok(o) => panic!(
            "installing {TOOLS} failed: `{command}` exited with {}:\n{}\n\
             Install them by hand with that command (it needs the npm registry) and build again.",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "installing {TOOLS} needs npm (with Node.js >= 20.19): `{command}` could not start: {e}"
        ),
    }
}

/// Builds the plugins whose inputs changed, on as many threads as cores.
fn build_all(workspace: &Path, tools: &Path, plugins: &[JsPlugin]) {
    let sdk_inputs = [
        workspace.join("guest-sdk/js/plugbus"),
        workspace.join("guest-sdk/js/package-lock.json"),
        workspace.join("wit/v0.2.0/plugbus.wit"),
    ];
    let stale: Vec<(&JsPlugin, String)> = plugins
        .iter()
        .filter_map(|p| {
            let mut inputs = vec![p.dir.clone()];
            inputs.extend(sdk_inputs.iter().cloned());
            let stamp = stamp(&inputs);
            let current = std::fs::read_to_string(p.wasm.with_extension("stamp")).ok();
            (!p.wasm.exists() || current.as_deref() != Some(stamp.as_str())).then_some((p, stamp))
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    for chunk in stale.chunks(threads) {
        std::thread::scope(|scope| {
            for (plugin, stamp) in chunk {
                scope.spawn(move || build_one(workspace, tools, plugin, stamp));
            }
        });
    }
}

/// Builds one plugin through the SDK's `plugbus/build.js`.
fn build_one(workspace: &Path, tools: &Path, plugin: &JsPlugin, stamp: &str) {
    let build_js = workspace.join("guest-sdk/js/plugbus/build.js");
    let mut command = Command::new("node");
    command
        .current_dir(workspace)
        .arg(&build_js)
        .arg(plugin.dir.join("handler.js"))
        .arg(&plugin.wasm)
        .arg(workspace.join("wit/v0.2.0/plugbus.wit"))
        .env("PLUGBUS_JS_TOOLS", tools);
    let shown = format!(
        "cd {} && PLUGBUS_JS_TOOLS={} node {} {} {} {}",
        workspace.display(),
        tools.display(),
        build_js.display(),
        plugin.dir.join("handler.js").display(),
        plugin.wasm.display(),
        workspace.join("wit/v0.2.0/plugbus.wit").display()
    );
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "building {} with {TOOLS}: `{shown}` could not start: {e}",
            plugin.dir_name
        )
    });
    assert!(
        output.status.success() && plugin.wasm.exists(),
        "building the JavaScript plugin {} with {TOOLS} failed: `{shown}` exited with {}:\n{}{}",
        plugin.dir_name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(plugin.wasm.with_extension("stamp"), stamp)
        .unwrap_or_else(|e| panic!("write the stamp of {}: {e}", plugin.wasm.display()));
}

/// A digest (FNV-1a, 64 bits) of the names and contents of every file under
/// `inputs`, skipping `node_modules`, hidden entries and `*.test.js`.
fn stamp(inputs: &[PathBuf]) -> String {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries {
                let name = entry
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // The native tests are not in the component: editing one
                // rebuilds nothing.
                if name != "node_modules" && !name.starts_with('.') && !name.ends_with(".test.js") {
                    walk(&entry, files);
                }
            }
        } else {
            files.push(path.to_owned());
        }
    }
    let mut files = Vec::new();
    for input in inputs {
        walk(input, &mut files);
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        feed(file.to_string_lossy().as_bytes());
        feed(&std::fs::read(&file).unwrap_or_default());
    }
    format!("{hash:016x}\n")
}

/// Appends a constant per plugin and adds the plugins to `ALL`.
fn generate(plugins: &[JsPlugin], generated: &mut String) {
    let mut entries = String::new();
    for plugin in plugins {
        let prefix = if plugin.fixture { "FIXTURE" } else { "EXAMPLE" };
        let constant = format!(
            "{prefix}_{}",
            plugin.dir_name.to_uppercase().replace('-', "_")
        );
        let path = plugin.wasm.display().to_string();
        writeln!(
            generated,
            "/// The component of the JavaScript plugin `{}` (built with componentize-js).\npub const {constant}: &str = {path:?};",
            plugin.dir_name
        )
        .expect("write to a string");
        let name = if plugin.fixture {
            format!("fixture-{}", plugin.dir_name)
        } else {
            plugin.dir_name.clone()
        };
        write!(entries, "({name:?}, {path:?}),").expect("write to a string");
    }
    let anchor = "pub const ALL: &[(&str, &str)] = &[";
    assert!(
        generated.contains(anchor),
        "build.rs no longer generates `{anchor}`"
    );
    *generated = generated.replacen(anchor, &format!("{anchor}{entries}"), 1);
}
