//! `cargo xtask demo`: builds the host, assembles a plugins directory from
//! `examples/plugins` (and the user's own plugin folders), and runs
//! `plugbus serve` on a fresh log (with `examples/plugbus.toml` and what
//! its webhook receiver needs, see [`crate::webhook`]), supervising it:
//! SIGINT, SIGTERM and SIGHUP
//! sent to the demo are forwarded to the host's process group, the demo
//! waits for the host and exits with its status, and (on Linux) the host is
//! told to stop when the demo dies, even by SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};

/// The demo's folder below the workspace, when `--dir` is not given.
const DEFAULT_DIR: &str = "target/plugbus-demo";

/// The file that marks a folder as the demo's own, which it may wipe.
const MARKER: &str = ".plugbus-demo";

/// How often the user's plugin folders are looked at for changes.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// The flags of `cargo xtask demo`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask demo",
    bin_name = "cargo xtask demo",
    about = "Build the host and the example plugins, then run `plugbus serve` on a fresh log: \
             it publishes examples/events.jsonl, then serves HTTP until Ctrl-C or SIGTERM.",
    long_about = "Build the host and the example plugins, then run `plugbus serve` on a fresh log: \
                  it publishes examples/events.jsonl, then serves HTTP until Ctrl-C or SIGTERM.\n\n\
                  Each run makes <DIR>/plugins anew from examples/plugins (and --plugins) and \
                  starts from an empty event log in <DIR>/data. While the demo runs, a plugin \
                  copied into <DIR>/plugins/<tenant>/ is loaded at once (hot reload). Ctrl-C, \
                  SIGINT or SIGTERM sent to the demo stop the host gracefully; a second one stops \
                  it at once."
)]
pub struct DemoArgs {
    /// A folder of your own plugins, as DIR/<tenant>/<name>.wasm (with an
    /// optional DIR/<tenant>/<name>.toml manifest). They are copied into
    /// the demo's plugins at start and again whenever they change while the
    /// demo runs, and the host reloads them; the folder itself is never
    /// changed. Use a tenant of examples/plugbus.toml (acme-pos,
    /// globex-retail, chaos-lab) to publish to it with that tenant's token.
    /// May be given more than once.
    #[arg(long, value_name = "DIR")]
    pub plugins: Vec<PathBuf>,

    /// Where the host serves HTTP (ingest, admin API, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Run this plugbus binary instead of building the workspace's
    /// (`cargo build --workspace --bin plugbus --examples`).
    #[arg(long, value_name = "FILE")]
    pub server: Option<PathBuf>,

    /// The demo's folder; its plugins/ and data/ are made anew on each run.
    /// [default: target/plugbus-demo in the workspace]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `cargo xtask demo ARGS`: parses the flags (`--help` prints the help)
/// and runs the demo.
pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let args = std::iter::once("cargo xtask demo".to_owned()).chain(args.iter().cloned());
    match DemoArgs::try_parse_from(args) {
        Ok(args) => demo(&args),
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
            e.print().context("cannot print the demo's usage")?;
            Ok(code)
        }
    }
}

/// Prints a step of the demo, told apart from the host's own output.
fn step(message: impl std::fmt::Display) {
    eprintln!("[demo] {message}");
}

fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let root = crate::workspace();
    // Absolute, since the host runs in the workspace, not here.
    let dir = match &args.dir {
        Some(dir) => std::path::absolute(dir).context("cannot resolve --dir")?,
        None => root.join(DEFAULT_DIR),
    };
    let plugins = dir.join("plugins");
    let data = dir.join("data");
    outside_the_demo(&args.plugins, &dir)?;
    // Nothing is deleted, and nothing is built, while a host of an earlier
    // demo still holds the folder or the port.
    preflight(&dir, args.dir.is_none(), &data, args.listen)?;

    let server = match &args.server {
        Some(server) => std::path::absolute(server).context("cannot resolve --server")?,
        None => build_host(&root)?,
    };
    // Again, now that the build (up to half an hour) is done: another demo
    // started meanwhile may be serving from this folder by now.
    if args.server.is_none() {
        preflight(&dir, args.dir.is_none(), &data, args.listen)?;
    }

    step(format_args!(
        "assembling the plugins in {}",
        plugins.display()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by cargo xtask demo; wiped by its next run\n",
    )
    .with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    let examples = assemble_examples(&root, &plugins)?;
    let mut mirror = Mirror::default();
    for change in mirror.sync(&args.plugins, &plugins, false)? {
        step(format_args!("  {change}"));
    }
    step(format_args!(
        "  {examples} example plugins from examples/plugins, 2 files the host must refuse (in chaos-lab){}",
        match mirror.copied.len() {
            0 => String::new(),
            n => format!(", {n} files of yours"),
        }
    ));
    warn_unknown_tenants(&root, &mirror);

    // The webhook that webhook-notify posts the low-stock alerts to, on a
    // port picked now: the demo's copy of its manifest and the demo's
    // plugbus.toml are written for it.
    let receiver = crate::webhook::start(step)?;
    let config = crate::webhook::write_config(
        &root.join("examples/plugbus.toml"),
        &dir.join("plugbus.toml"),
        &receiver.origin,
    )?;
    if crate::webhook::point_manifest(&plugins, &receiver.origin)? {
        step(format_args!(
            "  webhook-notify posts to a receiver on {}{}: 503 to the first request of each \
             Idempotency-Key (the host retries), 200 after",
            receiver.origin,
            crate::webhook::PATH
        ));
    }

    // A fresh log each run: the same events again would be duplicates.
    // The compile cache stays: the Python and JavaScript examples take 25
    // to 45 s each to compile, once.
    clear_except(&data, COMPILE_CACHE)?;
    let events_path = root.join("examples/events.jsonl");
    let events = std::fs::File::open(&events_path)
        .with_context(|| format!("cannot open {}", events_path.display()))?;

    let mut command = Command::new(&server);
    command
        .current_dir(&root)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--plugins")
        .arg(&plugins)
        .arg("--data")
        .arg(&data)
        .args(["--stdin", "--keep-serving"])
        .env(crate::webhook::TOKEN_VAR, crate::webhook::TOKEN)
        .stdin(events);
    // Registered before the host starts, so that no signal and no exit of
    // the host is missed.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD])
        .context("cannot listen for signals")?;
    let child = spawn_supervised(&mut command)
        .with_context(|| format!("cannot run {}", server.display()))?;
    step(format_args!(
        "started plugbus serve as process {} (the demo is process {}); publishing \
         examples/events.jsonl: deliveries follow on stdout, the host's log on stderr",
        child.id(),
        std::process::id()
    ));

    let listen = args.listen;
    let demo_plugins = plugins.clone();
    let host_pid = child.id();
    std::thread::spawn(move || announce_when_serving(listen, &demo_plugins, host_pid));
    if !args.plugins.is_empty() {
        let sources = args.plugins.clone();
        let target = plugins.clone();
        std::thread::spawn(move || keep_in_sync(mirror, &sources, &target));
    }

    let status = supervise(child, signals)?;
    step(format_args!(
        "the host stopped ({status}); its log stays in {} until the next demo",
        data.display()
    ));
    Ok(exit_code(status))
}

/// The host's compile cache below its data folder (`<data>/compiled`).
const COMPILE_CACHE: &str = "compiled";

/// Deletes everything in `dir` but its entry `keep`.
fn clear_except(dir: &Path, keep: &str) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot clear {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot clear {}", dir.display()))?;
        if entry.file_name() == keep {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot clear {}", path.display()))?;
    }
    Ok(())
}

/// Refuses a `--plugins` folder inside the demo's folder, which each run
/// makes anew.
fn outside_the_demo(sources: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    for source in sources {
        let source = std::path::absolute(source).context("cannot resolve --plugins")?;
        if source.starts_with(dir) {
            bail!(
                "--plugins {}: it lies in the demo's folder {}, which each run makes anew; keep \
                 your plugins elsewhere (or copy them into {}/<tenant>/ while the demo runs)",
                source.display(),
                dir.display(),
                dir.join("plugins").display()
            );
        }
    }
    Ok(())
}

/// Refuses to go on while a host of an earlier demo still holds the
/// demo's folder or the port, and refuses a `--dir` that is not the demo's
/// own (it would be wiped).
fn preflight(dir: &Path, default_dir: bool, data: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    if !default_dir && !dir.join(MARKER).exists() {
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        if !empty {
            bail!(
                "--dir {}: not empty and not made by an earlier demo (no {MARKER} in it); \
                 the demo wipes its plugins/ and data/, so give it an empty or new folder",
                dir.display()
            );
        }
    }
    let holders = holders_of(data);
    if let Some((pid, name)) = holders.first() {
        bail!(
            "{} is in use by process {pid} ({name}): a host of an earlier demo is still running. \
             Nothing was deleted. Stop it (`kill {pid}`) and run the demo again.",
            data.display()
        );
    }
    if listen.port() != 0 {
        match TcpListener::bind(listen) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "{listen} is in use: is a host of an earlier demo still running? (`ss -ltnp` \
                 shows who listens there.) Nothing was deleted. Stop it, or run the demo on \
                 another address: cargo xtask demo --listen 127.0.0.1:8081"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
        }
    }
    Ok(())
}

/// The processes (pid, name) that have a file below `dir` open, such as a
/// host's event log; Linux only (elsewhere, none are found and the port
/// check stands alone).
fn holders_of(dir: &Path) -> Vec<(u32, String)> {
    let mut holders = Vec::new();
    if !cfg!(target_os = "linux") {
        return holders;
    }
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return holders;
    };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return holders;
    };
    let me = std::process::id();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes of other users cannot be read, and any may exit while
        // being read: both are skipped.
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(&dir)));
        if holds {
            let name = std::fs::read_to_string(process.path().join("comm"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned());
            holders.push((pid, name));
        }
    }
    holders
}

/// Builds the host with the same features as `cargo xtask test`, and
/// answers the path of its binary.
///
/// `--examples` is there for the features: asking for examples (the
/// workspace has none) makes cargo resolve features with the
/// dev-dependencies, as `cargo test --workspace` does. Without it, and
/// above all with `-p plugbus` alone, wasmtime and a quarter of the tree
/// are built a second time with other features.
fn build_host(root: &Path) -> anyhow::Result<PathBuf> {
    step(
        "building the host: cargo build --workspace --bin plugbus --examples (the first build \
         compiles wasmtime, 10 to 30 minutes on two cores; later ones take seconds)",
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--workspace",
            "--bin",
            "plugbus",
            "--examples",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let stdout = build.stdout.take().context("cargo's stdout is not piped")?;
    let mut binary = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo's output")?;
        if let Some(path) = plugbus_binary(&line) {
            binary = Some(path);
        }
    }
    let status = build.wait().context("cannot wait for cargo")?;
    if !status.success() {
        bail!("cannot build the host: cargo build {status}");
    }
    binary.context("cargo build did not report the plugbus binary")
}

/// The path of the `plugbus` binary, if `line` is cargo's JSON message of
/// that artifact.
fn plugbus_binary(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    let is_plugbus = message["reason"] == "compiler-artifact"
        && message["target"]["name"] == "plugbus"
        && message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
    if !is_plugbus {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

/// The component for the demo plugin `name`: that of the plugin crate named
/// `name`, or else of the crate whose name is the longest prefix of `name`
/// followed by `-` (so `fixture-spin-fuel` is another instance of
/// `fixture-spin`, with a manifest of its own).
fn component_for(name: &str) -> Option<&'static str> {
    if let Some((_, wasm)) = LANGUAGE_EXAMPLES
        .iter()
        .find(|(example, _)| *example == name)
    {
        return *wasm;
    }
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

/// The Python and JavaScript examples that `examples/plugins` has
/// manifests for, and their components: `None` while this checkout does
/// not build them (they are then left out, with a note), and never the
/// Rust `low-stock-alert` that their names start with.
const LANGUAGE_EXAMPLES: [(&str, Option<&str>); 2] = [
    ("low-stock-alert-py", artifact("low-stock-alert-py")),
    ("low-stock-alert-js", artifact("low-stock-alert-js")),
];

/// The component `plugbus_artifacts::ALL` has under exactly `name`.
const fn artifact(name: &str) -> Option<&'static str> {
    let all = plugbus_artifacts::ALL;
    let mut i = 0;
    while i < all.len() {
        if const_eq(all[i].0, name) {
            return Some(all[i].1);
        }
        i += 1;
    }
    None
}

/// `a == b`, in a const fn.
const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Makes `plugins` anew from the manifests in `examples/plugins`, with two
/// files the host must refuse; answers how many example plugins it holds.
fn assemble_examples(root: &Path, plugins: &Path) -> anyhow::Result<usize> {
    let manifests = root.join("examples/plugins");
    if plugins.exists() {
        std::fs::remove_dir_all(plugins)
            .with_context(|| format!("cannot clear {}", plugins.display()))?;
    }
    let mut tenants = std::fs::read_dir(&manifests)
        .with_context(|| format!("cannot read {}", manifests.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    tenants.sort_by_key(|e| e.path());
    let mut count = 0;
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
            if LANGUAGE_EXAMPLES
                .iter()
                .any(|(example, wasm)| *example == name && wasm.is_none())
            {
                step(format_args!(
                    "  note: {name} left out: its component is not built in this checkout \
                     (plugbus_artifacts::ALL has no {name:?})"
                ));
                continue;
            }
            let Some(wasm) = component_for(name) else {
                bail!(
                    "{}: no plugin crate named {name:?} (or a prefix of it) in plugins/",
                    manifest.display()
                );
            };
            std::fs::copy(wasm, tenant_dir.join(format!("{name}.wasm")))?;
            std::fs::copy(&manifest, tenant_dir.join(format!("{name}.toml")))?;
            count += 1;
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
    Ok(count)
}

/// What a file was when it was looked at: its size and modification time.
type Stamp = (u64, Option<SystemTime>);

/// The user's plugin files (from `--plugins`) copied into the demo's
/// plugins directory, by their path below it (`<tenant>/<file>`).
#[derive(Debug, Default)]
struct Mirror {
    /// Copied files: where from, and what the source was when copied.
    copied: BTreeMap<PathBuf, (PathBuf, Stamp)>,
    /// What each source was at the previous look, so that a file still
    /// being written is copied only once it has stopped changing.
    seen: BTreeMap<PathBuf, Stamp>,
}

impl Mirror {
    /// Copies into `target` the plugin files of `sources` that are new or
    /// changed since they were last copied, and removes the copies of
    /// those that are gone; answers what it did, one line each. With
    /// `settled`, a file is copied only when it has not changed since the
    /// previous call (a writer may still be at work on it).
    fn sync(
        &mut self,
        sources: &[PathBuf],
        target: &Path,
        settled: bool,
    ) -> anyhow::Result<Vec<String>> {
        let wanted = plugin_files(sources)?;
        let mut done = Vec::new();
        let mut seen = BTreeMap::new();
        for (relative, source) in &wanted {
            let Ok(metadata) = std::fs::metadata(source) else {
                continue;
            };
            let stamp = (metadata.len(), metadata.modified().ok());
            seen.insert(relative.clone(), stamp);
            let current = (source.clone(), stamp);
            if self.copied.get(relative) == Some(&current)
                || (settled && self.seen.get(relative) != Some(&stamp))
            {
                continue;
            }
            let destination = target.join(relative);
            copy_into_place(source, &destination)?;
            let verb = if self.copied.contains_key(relative) {
                "updated"
            } else {
                "copied"
            };
            done.push(format!(
                "{verb} {} from {}",
                destination.display(),
                source.display()
            ));
            self.copied.insert(relative.clone(), current);
        }
        let gone: Vec<PathBuf> = self
            .copied
            .keys()
            .filter(|relative| !wanted.contains_key(*relative))
            .cloned()
            .collect();
        for relative in gone {
            let destination = target.join(&relative);
            match std::fs::remove_file(&destination) {
                Ok(()) => done.push(format!(
                    "removed {} (its source is gone)",
                    destination.display()
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot remove {}", destination.display()));
                }
            }
            self.copied.remove(&relative);
        }
        self.seen = seen;
        Ok(done)
    }

    /// The tenants the copied files belong to.
    fn tenants(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self
            .copied
            .keys()
            .filter_map(|relative| relative.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        tenants.dedup();
        tenants
    }
}

/// The plugin files (`.wasm` and `.toml`) of the folders `sources`, laid
/// out as `<source>/<tenant>/<file>`, by `<tenant>/<file>`; a later source
/// wins over an earlier one. Hidden names are skipped; a plugin file
/// directly in a source, or a tenant folder with a name the host refuses,
/// is an error that says how to lay the folder out.
fn plugin_files(sources: &[PathBuf]) -> anyhow::Result<BTreeMap<PathBuf, PathBuf>> {
    let mut files = BTreeMap::new();
    for source in sources {
        let entries = std::fs::read_dir(source)
            .with_context(|| format!("--plugins {}: cannot read it", source.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", source.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if !path.is_dir() {
                if is_plugin_file(&path) {
                    bail!(
                        "--plugins {}: {name} lies directly in it; put each plugin in a tenant's \
                         folder: {}/<tenant>/{name} (a tenant of examples/plugbus.toml, such as \
                         acme-pos)",
                        source.display(),
                        source.display()
                    );
                }
                continue;
            }
            if !valid_tenant(&name) {
                bail!(
                    "--plugins {}: {name:?} is not a tenant name (lowercase letters, digits, '-' \
                     and '_', at most 64)",
                    source.display()
                );
            }
            let files_of_tenant = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for file in files_of_tenant {
                let file = file.with_context(|| format!("cannot read {}", path.display()))?;
                let file_name = file.file_name();
                let file_path = file.path();
                if file_name.to_string_lossy().starts_with('.')
                    || !file_path.is_file()
                    || !is_plugin_file(&file_path)
                {
                    continue;
                }
                files.insert(Path::new(&*name).join(&file_name), file_path);
            }
        }
    }
    Ok(files)
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm" || e == "toml")
}

/// Whether the host takes `name` as a tenant's folder.
fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Copies `source` to `destination` through a hidden file beside it and a
/// rename, so that the host never reads a half-written plugin (it skips
/// hidden names).
fn copy_into_place(source: &Path, destination: &Path) -> anyhow::Result<()> {
    let dir = destination
        .parent()
        .context("a plugin's destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file_name = destination
        .file_name()
        .context("a plugin's destination has no file name")?;
    let partial = dir.join(format!(".{}.partial", file_name.to_string_lossy()));
    std::fs::copy(source, &partial).with_context(|| format!("cannot copy {}", source.display()))?;
    std::fs::rename(&partial, destination)
        .with_context(|| format!("cannot move a copy into {}", destination.display()))?;
    Ok(())
}

/// Warns about tenants of the user's plugins that the demo's configuration
/// does not name: their plugins load, but nothing can publish to them.
fn warn_unknown_tenants(root: &Path, mirror: &Mirror) {
    let tenants = mirror.tenants();
    if tenants.is_empty() {
        return;
    }
    let config = root.join("examples/plugbus.toml");
    let known: Vec<String> = std::fs::read_to_string(&config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("tenants")?.as_table().cloned())
        .map(|tenants| tenants.keys().cloned().collect())
        .unwrap_or_default();
    for tenant in tenants {
        if !known.contains(&tenant) {
            step(format_args!(
                "  warning: the tenant {tenant:?} has no token in examples/plugbus.toml: its \
                 plugins load, but no event can be published to them (use one of {})",
                known.join(", ")
            ));
        }
    }
}

/// Copies the user's changed plugin files into the demo for as long as it
/// runs.
fn keep_in_sync(mut mirror: Mirror, sources: &[PathBuf], target: &Path) {
    // The last warning printed: a problem that lasts is said once, not
    // every half second.
    let mut warned: Option<String> = None;
    loop {
        std::thread::sleep(SYNC_INTERVAL);
        match mirror.sync(sources, target, true) {
            Ok(changes) => {
                warned = None;
                for change in changes {
                    step(format_args!("{change}; the host reloads it"));
                }
            }
            Err(e) => {
                let warning = format!("{e:#}");
                if warned.as_deref() != Some(warning.as_str()) {
                    step(format_args!(
                        "warning: {warning} (said once while it lasts)"
                    ));
                    warned = Some(warning);
                }
            }
        }
    }
}

/// Whether a host answers `GET /healthz` on `addr`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .is_err()
        || stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Once the host answers on `listen`, prints where it serves, where
/// plugins go and how to stop it.
fn announce_when_serving(listen: SocketAddr, plugins: &Path, host_pid: u32) {
    if listen.port() == 0 {
        return;
    }
    while !healthy(listen) {
        std::thread::sleep(Duration::from_millis(250));
    }
    step(format_args!(
        "serving on http://{listen} (the sample events' deliveries go on below)"
    ));
    step(format_args!(
        "  publish: curl http://{listen}/v1/events -H 'Authorization: Bearer acme-demo-token' … \
         (README, Quick start); tokens in examples/plugbus.toml"
    ));
    step(format_args!(
        "  plugins: copy a .wasm (and its .toml) into {}/<tenant>/ and the host loads it at once",
        plugins.display()
    ));
    step(format_args!(
        "  stop:    Ctrl-C, or `kill {}` (the demo, which stops the host {host_pid} and waits for it)",
        std::process::id()
    ));
}

/// Starts `command` in a process group of its own (so that the demo can
/// signal the host and whatever it starts, and a terminal's Ctrl-C reaches
/// the demo alone, which forwards it), tied to the demo's life where the
/// kernel can do that.
fn spawn_supervised(command: &mut Command) -> std::io::Result<Child> {
    std::os::unix::process::CommandExt::process_group(command, 0);
    stop_with_parent(command);
    command.spawn()
}

/// Asks the kernel to send the host SIGTERM when the demo dies, even by
/// SIGKILL (`PR_SET_PDEATHSIG`, Linux; `PROC_PDEATHSIG_CTL`, FreeBSD).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[allow(unsafe_code)]
fn stop_with_parent(command: &mut Command) {
    let parent = rustix::process::getpid();
    let hook = move || -> std::io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
        // The demo may have died before the line above: then no signal
        // comes, and the host must not start.
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it only
    // makes two system calls (prctl and getppid), which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, hook);
    }
}

/// Elsewhere the kernel has no such request: a host whose demo is killed
/// with SIGKILL keeps running, and the next demo says so (the port check)
/// instead of wiping its folder.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn stop_with_parent(_command: &mut Command) {}

/// Waits for the host, forwarding SIGINT and SIGTERM (SIGHUP as SIGTERM)
/// to its process group; a second such signal kills the group at once.
/// Answers the host's exit status.
fn supervise(
    mut child: Child,
    mut signals: signal_hook::iterator::Signals,
) -> anyhow::Result<ExitStatus> {
    let group = rustix::process::Pid::from_child(&child);
    let mut stops = 0u32;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the host")? {
            return Ok(status);
        }
        // SIGCHLD wakes this when the host exits; it was registered before
        // the host started, so the exit cannot come unnoticed between
        // `try_wait` and here.
        for signal in signals.wait() {
            let forward = match signal {
                SIGINT => rustix::process::Signal::INT,
                SIGTERM | SIGHUP => rustix::process::Signal::TERM,
                _ => continue,
            };
            stops += 1;
            let forward = if stops == 1 {
                step(
                    "stopping the host: it finishes what is under way (at most drain_seconds, \
                     30 s); Ctrl-C again stops it at once",
                );
                forward
            } else {
                step("stopping the host at once (SIGKILL)");
                rustix::process::Signal::KILL
            };
            match rustix::process::kill_process_group(group, forward) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => step(format_args!("warning: cannot signal the host: {e}")),
            }
        }
    }
}

/// The host's exit status as the demo's: its code, or 128 + the signal
/// that ended it, as a shell reports it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        DemoArgs::try_parse_from(std::iter::once("cargo xtask demo").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).expect("no flags are fine");
        assert!(args.plugins.is_empty());
        assert_eq!(args.listen, "127.0.0.1:8080".parse().expect("an address"));
        assert!(args.server.is_none());
        assert!(args.dir.is_none());
    }

    #[test]
    fn flags() {
        let args = parse(&[
            "--plugins",
            "mine",
            "--plugins=theirs",
            "--listen",
            "127.0.0.1:9000",
            "--server",
            "target/release/plugbus",
            "--dir",
            "/tmp/demo",
        ])
        .expect("valid flags");
        assert_eq!(
            args.plugins,
            [PathBuf::from("mine"), PathBuf::from("theirs")]
        );
        assert_eq!(args.listen.port(), 9000);
        assert_eq!(args.server, Some(PathBuf::from("target/release/plugbus")));
        assert_eq!(args.dir, Some(PathBuf::from("/tmp/demo")));
    }

    #[test]
    fn unknown_flags_and_bad_values_are_errors() {
        let e = parse(&["--plugin", "mine"]).expect_err("--plugin is not a flag");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(e.to_string().contains("--plugins"), "{e}");
        let e = parse(&["--listen", "8080"]).expect_err("not an address");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        let e = parse(&["extra"]).expect_err("no positional arguments");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn help_names_every_flag() {
        let e = parse(&["--help"]).expect_err("--help stops parsing");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = e.to_string();
        for flag in [
            "--plugins <DIR>",
            "--listen <ADDR>",
            "--server <FILE>",
            "--dir <DIR>",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(help.contains("Usage: cargo xtask demo"), "{help}");
    }

    fn write(path: &Path, contents: &str) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the folder");
        std::fs::write(path, contents).expect("write");
    }

    #[test]
    fn copies_the_users_plugins_and_follows_their_changes() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let mine = tmp.path().join("mine");
        let demo = tmp.path().join("demo/plugins");
        write(&mine.join("acme-pos/my-plugin.wasm"), "v1");
        write(
            &mine.join("acme-pos/my-plugin.toml"),
            "subscribe = [\"*\"]\n",
        );
        write(&mine.join("acme-pos/notes.txt"), "not a plugin");
        write(&mine.join("acme-pos/.hidden.wasm"), "skipped");
        write(&mine.join(".git/config"), "skipped");
        write(&mine.join("README.md"), "not a plugin");

        let mut mirror = Mirror::default();
        let done = mirror
            .sync(std::slice::from_ref(&mine), &demo, false)
            .expect("sync");
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(
            std::fs::read_to_string(demo.join("acme-pos/my-plugin.wasm")).expect("copied"),
            "v1"
        );
        assert!(demo.join("acme-pos/my-plugin.toml").is_file());
        assert!(!demo.join("acme-pos/notes.txt").exists());
        assert!(!demo.join("acme-pos/.hidden.wasm").exists());
        assert!(!demo.join(".git").exists());
        assert_eq!(mirror.tenants(), ["acme-pos"]);
        // Nothing changed: nothing copied.
        assert!(
            mirror
                .sync(std::slice::from_ref(&mine), &demo, true)
                .expect("sync")
                .is_empty()
        );

        // A rebuilt plugin is copied once it has stopped changing.
        write(&mine.join("acme-pos/my-plugin.wasm"), "v2, longer");
        assert!(
            mirror
                .sync(std::slice::from_ref(&mine), &demo, true)
                .expect("sync")
                .is_empty()
        );
        let done = mirror
            .sync(std::slice::from_ref(&mine), &demo, true)
            .expect("sync");
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].starts_with("updated"), "{done:?}");
        assert_eq!(
            std::fs::read_to_string(demo.join("acme-pos/my-plugin.wasm")).expect("updated"),
            "v2, longer"
        );
        // No partial file is left beside it.
        let names: Vec<_> = std::fs::read_dir(demo.join("acme-pos"))
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A removed source removes its copy.
        std::fs::remove_file(mine.join("acme-pos/my-plugin.toml")).expect("remove");
        let done = mirror
            .sync(std::slice::from_ref(&mine), &demo, true)
            .expect("sync");
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(!demo.join("acme-pos/my-plugin.toml").exists());
        assert!(demo.join("acme-pos/my-plugin.wasm").exists());
    }

    #[test]
    fn a_later_folder_wins() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        write(&first.join("acme-pos/p.wasm"), "first");
        write(&second.join("acme-pos/p.wasm"), "second");
        write(&first.join("globex-retail/q.wasm"), "q");
        let demo = tmp.path().join("demo");
        Mirror::default()
            .sync(&[first, second], &demo, false)
            .expect("sync");
        assert_eq!(
            std::fs::read_to_string(demo.join("acme-pos/p.wasm")).expect("copied"),
            "second"
        );
        assert!(demo.join("globex-retail/q.wasm").is_file());
    }

    #[test]
    fn a_misplaced_plugin_is_an_error_that_says_where_it_goes() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let mine = tmp.path().join("mine");
        write(&mine.join("my_plugin.wasm"), "wasm");
        let e = Mirror::default()
            .sync(std::slice::from_ref(&mine), &tmp.path().join("demo"), false)
            .expect_err("not in a tenant's folder");
        assert!(e.to_string().contains("<tenant>/my_plugin.wasm"), "{e}");

        std::fs::remove_file(mine.join("my_plugin.wasm")).expect("remove");
        write(&mine.join("Acme POS/p.wasm"), "wasm");
        let e = Mirror::default()
            .sync(&[mine], &tmp.path().join("demo"), false)
            .expect_err("not a tenant name");
        assert!(e.to_string().contains("not a tenant name"), "{e}");

        let e = Mirror::default()
            .sync(
                &[tmp.path().join("missing")],
                &tmp.path().join("demo"),
                false,
            )
            .expect_err("no such folder");
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }

    #[test]
    fn a_foreign_dir_is_not_wiped() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().join("somewhere");
        write(&dir.join("data/precious"), "keep");
        let listen = "127.0.0.1:0".parse().expect("an address");
        let e = preflight(&dir, false, &dir.join("data"), listen).expect_err("foreign");
        assert!(e.to_string().contains("not made by an earlier demo"), "{e}");
        // New, empty, or the demo's own: fine.
        preflight(
            &tmp.path().join("new"),
            false,
            &tmp.path().join("new/data"),
            listen,
        )
        .expect("a new folder");
        write(&dir.join(MARKER), "");
        preflight(&dir, false, &dir.join("data"), listen).expect("the demo's own");
    }

    #[test]
    fn plugins_inside_the_demos_folder_are_refused() {
        let dir = Path::new("/w/target/plugbus-demo");
        let e = outside_the_demo(&[PathBuf::from("/w/target/plugbus-demo/plugins")], dir)
            .expect_err("inside");
        assert!(e.to_string().contains("makes anew"), "{e}");
        outside_the_demo(&[PathBuf::from("/home/me/my-plugins")], dir).expect("outside");
    }

    #[test]
    fn a_port_in_use_is_refused_before_anything_is_deleted() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let listen = taken.local_addr().expect("its address");
        let e = preflight(tmp.path(), true, &tmp.path().join("data"), listen)
            .expect_err("the port is taken");
        assert!(e.to_string().contains("is in use"), "{e}");
        assert!(e.to_string().contains("Nothing was deleted"), "{e}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_process_holding_the_data_is_named() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let data = tmp.path().join("data");
        write(&data.join("events.db"), "");
        // A process of its own holds the file open (the demo skips itself).
        let mut holder = Command::new("sh")
            .arg("-c")
            .arg("exec sleep 600 < \"$0\"")
            .arg(data.join("events.db"))
            .spawn()
            .expect("start sh");
        let pid = holder.id();
        let mut found = Vec::new();
        // The shell opens the file as it starts; wait until it has.
        for _ in 0..600 {
            found = holders_of(&data);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        holder.kill().expect("kill the holder");
        holder.wait().expect("reap the holder");
        assert_eq!(found.first().map(|(p, _)| *p), Some(pid), "{found:?}");
        assert!(holders_of(&data).is_empty());
    }

    #[test]
    fn the_plugbus_binary_is_found_in_cargos_messages() {
        let artifact = r#"{"reason":"compiler-artifact","target":{"name":"plugbus","kind":["bin"]},"executable":"/w/target/debug/plugbus"}"#;
        assert_eq!(
            plugbus_binary(artifact),
            Some(PathBuf::from("/w/target/debug/plugbus"))
        );
        let library = r#"{"reason":"compiler-artifact","target":{"name":"plugbus","kind":["lib"]},"executable":null}"#;
        assert_eq!(plugbus_binary(library), None);
        assert_eq!(plugbus_binary("not json"), None);
    }
}
