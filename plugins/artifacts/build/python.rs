//! Builds the Python plugins: every directory under `plugins/examples` with
//! an `app.py`, and every `plugins/fixtures/py-*` directory, each with
//! componentize-py into `target/guests/python/<dir>.wasm` (world
//! `plugbus:plugin/handler@0.2.0`, the SDK of `guest-sdk/python` on the
//! path). componentize-py is installed, pinned, into
//! `target/lang-tools/python` when missing.
//!
//! A component is rebuilt only when its inputs changed: the plugin's
//! files, the SDK's, the WIT and the tool's version, fingerprinted into
//! `<dir>.wasm.inputs` beside it. The builds run in parallel, one thread
//! per plugin (each is one single-threaded componentize-py process).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned componentize-py.
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The world Python plugins target.
const WORLD: &str = "plugbus:plugin/handler@0.2.0";
/// The pinned pytest, which runs the Python plugins' native tests.
const PYTEST_VERSION: &str = "8.3.4";
/// The Python interpreter that runs componentize-py.
const PYTHON: &str = "python3";

/// One Python plugin to build.
struct PythonPlugin {
    /// Its directory (holds `app.py`).
    dir: PathBuf,
    /// The directory's name, which names the component.
    name: String,
    /// Whether it is a test fixture (else an example).
    fixture: bool,
}

impl PythonPlugin {
    /// The name in `ALL`: the directory's, with `fixture-` before a fixture's.
    fn package(&self) -> String {
        if self.fixture {
            format!("fixture-{}", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The generated constant: `EXAMPLE_<DIR>` or `FIXTURE_<DIR>`.
    fn constant(&self) -> String {
        let prefix = if self.fixture { "FIXTURE" } else { "EXAMPLE" };
        format!("{prefix}_{}", self.name.to_uppercase().replace('-', "_"))
    }
}

/// Builds every Python plugin of `workspace` and adds their constants and
/// `ALL` entries to `generated` (the artifacts file the Rust guests made).
pub fn extend(workspace: &Path, generated: String) -> String {
    let mut plugins = discover(&workspace.join("plugins/examples"), false);
    plugins.extend(discover(&workspace.join("plugins/fixtures"), true));
    let out_dir = workspace.join("target/guests/python");
    if !plugins.is_empty() {
        let tools = workspace.join("target/lang-tools/python");
        ensure_pip_package(
            &tools,
            "componentize-py",
            "componentize_py",
            COMPONENTIZE_PY_VERSION,
            "needed to build the Python plugins",
        );
        std::fs::create_dir_all(&out_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
        let sdk = workspace.join("guest-sdk/python");
        // WIT 0.2.0 until the Python SDK targets 0.3.0 (the host serves both).
        let wit = workspace.join("wit/v0.2.0");
        std::thread::scope(|scope| {
            for plugin in &plugins {
                let (tools, sdk, wit, out_dir) = (&tools, &sdk, &wit, &out_dir);
                scope.spawn(move || build_one(plugin, tools, sdk, wit, out_dir));
            }
        });
    }
    let mut constants = String::new();
    let mut all = String::new();
    for plugin in &plugins {
        let wasm = out_dir.join(format!("{}.wasm", plugin.name));
        writeln!(
            constants,
            "/// The component of the Python `{}` plugin.\npub const {}: &str = {:?};",
            plugin.package(),
            plugin.constant(),
            wasm.display().to_string()
        )
        .expect("write to a string");
        write!(
            all,
            "({:?}, {:?}),",
            plugin.package(),
            wasm.display().to_string()
        )
        .expect("write to a string");
    }
    // pytest for the tests, beside the tools (the interpreter's own when it
    // has one).
    let has_pytest = Command::new(PYTHON)
        .args(["-c", "import pytest"])
        .env_remove("PYTHONPATH")
        .output()
        .is_ok_and(|o| o.status.success());
    let pytest_path = if has_pytest {
        String::new()
    } else {
        let tools = workspace.join("target/lang-tools/pytest");
        ensure_pip_package(
            &tools,
            "pytest",
            "pytest",
            PYTEST_VERSION,
            "needed to run the Python plugins' native tests",
        );
        tools.display().to_string()
    };
    writeln!(
        constants,
        "/// `PYTHONPATH` under which `{PYTHON} -m pytest` runs pytest: empty when the\n\
         /// interpreter has pytest, else a pinned pytest {PYTEST_VERSION} installed by the build.\n\
         pub const PYTEST_PATH: &str = {pytest_path:?};"
    )
    .expect("write to a string");
    let marker = "pub const ALL: &[(&str, &str)] = &[";
    assert!(
        generated.contains(marker),
        "the generated artifacts file has no `{marker}` to add the Python plugins to"
    );
    constants + &generated.replacen(marker, &format!("{marker}{all}"), 1)
}

/// The Python plugin directories directly under `dir`, sorted by name:
/// those with an `app.py`, and under `plugins/fixtures` only `py-*` ones.
fn discover(dir: &Path, fixture: bool) -> Vec<PythonPlugin> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut plugins: Vec<_> = entries
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.join("app.py").is_file())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            (!fixture || name.starts_with("py-")).then_some(PythonPlugin {
                dir: path,
                name,
                fixture,
            })
        })
        .collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    plugins
}

/// The command that runs the pinned componentize-py from `tools`.
fn componentize_py(tools: &Path) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .env("PYTHONPATH", tools)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args([
            "-c",
            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ]);
    command
}

/// Installs `package==version` with pip into `tools` when that version is
/// not there (`marker`, the package's `dist-info` directory name without
/// the version, tells), for `purpose` (named in the errors).
fn ensure_pip_package(tools: &Path, package: &str, marker: &str, version: &str, purpose: &str) {
    let marker = tools.join(format!("{marker}-{version}.dist-info"));
    if marker.is_dir() {
        return;
    }
    // Into a directory of its own first, so that a concurrent build never
    // sees half an installation.
    let staging = tools.with_extension(format!("installing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let spec = format!("{package}=={version}");
    let shown = format!(
        "{PYTHON} -m pip install --target {} {spec}",
        tools.display()
    );
    let output = Command::new(PYTHON)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
        ])
        .arg(&staging)
        .arg(&spec)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {PYTHON} to install {package} {version} ({purpose}): {e}; \
                 install Python 3.10 or later with pip, then run `{shown}`"
            )
        });
    assert!(
        output.status.success(),
        "installing {package} {version} ({purpose}) failed: `{shown}` said:\n{}\n\
         run that command by hand (it needs network access to PyPI) and build again",
        String::from_utf8_lossy(&output.stderr)
    );
    if marker.is_dir() {
        // Another build installed it meanwhile, and may be running it.
        let _ = std::fs::remove_dir_all(&staging);
        return;
    }
    let _ = std::fs::remove_dir_all(tools);
    if let Some(parent) = tools.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    if std::fs::rename(&staging, tools).is_err() {
        // Another build installed it meanwhile.
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(
        marker.is_dir(),
        "after `{shown}`, {} is missing",
        marker.display()
    );
}

/// A fingerprint of every input of `plugin`'s component.
fn fingerprint(plugin: &PythonPlugin, sdk: &Path, wit: &Path) -> String {
    let mut files = Vec::new();
    for root in [&plugin.dir, &sdk.join("plugbus"), wit] {
        collect(root, &mut files);
    }
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (COMPONENTIZE_PY_VERSION, WORLD).hash(&mut hasher);
    for file in &files {
        file.hash(&mut hasher);
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
            .hash(&mut hasher);
    }
    format!("{:016x} {} files\n", hasher.finish(), files.len())
}

/// The files under `dir` that go into a component.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Caches, hidden files and the native tests (componentize-py
        // bundles only what `app` imports) do not change the component.
        let test = name == "conftest.py" || name.starts_with("test_") || name == "tests";
        if name == "__pycache__" || name.starts_with('.') || test {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Builds `plugin` into `out_dir` unless its inputs are those of the
/// component already there.
fn build_one(plugin: &PythonPlugin, tools: &Path, sdk: &Path, wit: &Path, out_dir: &Path) {
    let wasm = out_dir.join(format!("{}.wasm", plugin.name));
    let stamp = out_dir.join(format!("{}.wasm.inputs", plugin.name));
    let inputs = fingerprint(plugin, sdk, wit);
    if wasm.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        return;
    }
    // Per process: a `cargo build` and a `cargo test` may run this build
    // script at once.
    let partial = out_dir.join(format!(
        "{}.wasm.partial-{}",
        plugin.name,
        std::process::id()
    ));
    let mut command = componentize_py(tools);
    command
        .arg("-d")
        .arg(wit)
        .args(["-w", WORLD, "componentize", "-p"])
        .arg(&plugin.dir)
        .arg("-p")
        .arg(sdk)
        .arg("app")
        .arg("-o")
        .arg(&partial);
    let shown = format!(
        "PYTHONPATH={} componentize-py -d {} -w {WORLD} componentize -p {} -p {} app -o {}",
        tools.display(),
        wit.display(),
        plugin.dir.display(),
        sdk.display(),
        wasm.display()
    );
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run componentize-py {COMPONENTIZE_PY_VERSION} (`{shown}`): {e}")
    });
    assert!(
        output.status.success(),
        "building the Python plugin {} with componentize-py {COMPONENTIZE_PY_VERSION} failed: \
         `{shown}` said:\n{}{}",
        plugin.dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &wasm)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), wasm.display()));
    std::fs::write(&stamp, inputs).unwrap_or_else(|e| panic!("write {}: {e}", stamp.display()));
}
