//! The build helper, run as `cargo xtask <command>`.
//!
//! Building this crate builds every plugin for `wasm32-wasip2` (through the
//! build script of `plugbus-artifacts`, which installs the target with rustup
//! when it is missing), so every command starts with the plugins built.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

mod scaffold;
mod table;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup            install the wasm32-wasip2 target (when missing) and build the plugins
  build-plugins    build every plugin for wasm32-wasip2 and print the components' paths
  demo             build the plugins, assemble target/plugbus-demo/plugins from examples/plugins,
                   and run `plugbus serve` (examples/plugbus.toml) on a fresh log in
                   target/plugbus-demo/data: it publishes examples/events.jsonl, then serves
                   HTTP on 127.0.0.1:8080 until Ctrl-C
  test [ARGS...]   run the whole test suite (`cargo test --workspace ARGS...`)
  bench [ARGS...]  run `plugbus-bench bench` (release build) on the noop fixture; ARGS go to it
  bench-noisy [ARGS...]
                   run `plugbus-bench bench-noisy` (release build): the noop fixture beside the hostile and
                   sleeper fixtures; ARGS go to it
  bench-table GROUP [--columns a,b,...] [--ratio a/b]...
                   print the markdown tables of BENCHMARKS.md from the last `cargo bench` of GROUP
  new-plugin DIR [--name NAME] [--tenant TENANT]
                   write a plugin crate in DIR (new or empty), outside this repository; NAME
                   defaults to DIR's last component, TENANT to acme-pos";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => {
            println!("wasm32-wasip2 is installed and the plugins are built in target/guests");
            Ok(ExitCode::SUCCESS)
        }
        Some("build-plugins") => {
            for (name, path) in plugbus_artifacts::ALL {
                println!("{name}\t{path}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("demo") => demo(),
        Some("test") => cargo(&["test", "--workspace"], &args[1..]),
        Some("bench") => release_bench(
            "bench",
            &[("--plugin", plugbus_artifacts::FIXTURE_NOOP)],
            &args[1..],
        ),
        Some("bench-noisy") => release_bench(
            "bench-noisy",
            &[
                ("--plugin", plugbus_artifacts::FIXTURE_NOOP),
                ("--hostile", plugbus_artifacts::FIXTURE_HOSTILE),
                ("--sleeper", plugbus_artifacts::FIXTURE_SLEEPER),
            ],
            &args[1..],
        ),
        Some("bench-table") => table::Request::parse(&args[1..]).and_then(|request| {
            print!(
                "{}",
                table::render(&workspace().join("target/criterion"), &request)?
            );
            Ok(ExitCode::SUCCESS)
        }),
        Some("new-plugin") => scaffold::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => {
            eprintln!("xtask: unknown command {other:?}\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
        None => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e:#}");
        ExitCode::FAILURE
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

/// Runs cargo in the workspace with `args` and then `extra`.
fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<ExitCode> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(args)
        .args(extra)
        .status()
        .context("cannot run cargo")?;
    Ok(exit_code(status))
}

/// Runs `plugbus COMMAND` from a release build with the fixture `paths`
/// (flag, path) and then `extra`.
fn release_bench(
    command: &str,
    paths: &[(&str, &str)],
    extra: &[String],
) -> anyhow::Result<ExitCode> {
    let mut all: Vec<String> = paths
        .iter()
        .flat_map(|(flag, path)| [(*flag).to_owned(), (*path).to_owned()])
        .collect();
    all.extend(extra.iter().cloned());
    cargo(
        &[
            "run",
            "--quiet",
            "--release",
            "--package",
            "plugbus-bench",
            "--",
            command,
        ],
        &all,
    )
}

/// A child's exit status as this process's.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// The component for the demo plugin `name`: that of the plugin crate named
/// `name`, or else of the crate whose name is the longest prefix of `name`
/// followed by `-` (so `fixture-spin-fuel` is another instance of
/// `fixture-spin`, with a manifest of its own).
fn component_for(name: &str) -> Option<&'static str> {
    plugbus_artifacts::ALL
        .iter()
        .filter(|(package, _)| {
            name == *package
                || name
                    .strip_prefix(package)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(package, _)| package.len())
        .map(|(_, wasm)| *wasm)
}

/// Assembles the demo's plugins directory and runs `plugbus serve` on a
/// fresh embedded log with the demo's configuration, publishing the sample
/// events from stdin, then serving HTTP until Ctrl-C.
fn demo() -> anyhow::Result<ExitCode> {
    let root = workspace();
    let manifests = root.join("examples/plugins");
    let plugins = root.join("target/plugbus-demo/plugins");
    if plugins.exists() {
        std::fs::remove_dir_all(&plugins)
            .with_context(|| format!("cannot clear {}", plugins.display()))?;
    }
    let mut tenants = std::fs::read_dir(&manifests)
        .with_context(|| format!("cannot read {}", manifests.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    tenants.sort_by_key(|e| e.path());
    for tenant in tenants {
        let tenant_dir = plugins.join(tenant.file_name());
        std::fs::create_dir_all(&tenant_dir)?;
        for manifest in std::fs::read_dir(tenant.path())? {
            let manifest = manifest?.path();
            if manifest.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let name = manifest
                .file_stem()
                .and_then(|s| s.to_str())
                .context("a manifest file name is not UTF-8")?;
            let Some(wasm) = component_for(name) else {
                bail!(
                    "{}: no plugin crate named {name:?} (or a prefix of it) in plugins/",
                    manifest.display()
                );
            };
            std::fs::copy(wasm, tenant_dir.join(format!("{name}.wasm")))?;
            std::fs::copy(&manifest, tenant_dir.join(format!("{name}.toml")))?;
        }
    }
    // Two plugins the host must refuse, beside the ones that run.
    let chaos = plugins.join("chaos-lab");
    std::fs::create_dir_all(&chaos)?;
    std::fs::copy(
        plugbus_artifacts::FIXTURE_WRONG_WORLD,
        chaos.join("fixture-wrong-world.wasm"),
    )?;
    std::fs::write(
        chaos.join("not-wasm.wasm"),
        "this is not a WebAssembly component\n",
    )?;

    // A fresh log each run: the same events again would be duplicates.
    let data = root.join("target/plugbus-demo/data");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot clear {}", data.display()))?;
    }
    let events_path = root.join("examples/events.jsonl");
    let events = std::fs::File::open(&events_path)
        .with_context(|| format!("cannot open {}", events_path.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["run", "--quiet", "--package", "plugbus", "--", "serve"])
        .arg("--config")
        .arg(root.join("examples/plugbus.toml"))
        .arg("--plugins")
        .arg(&plugins)
        .arg("--data")
        .arg(&data)
        .args(["--stdin", "--keep-serving"])
        .stdin(events)
        .status()
        .context("cannot run cargo")?;
    Ok(exit_code(status))
}
