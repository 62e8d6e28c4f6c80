//! The `plugbus` command: runs tenants' WebAssembly event handlers.
//!
//! One module per command: [`serve`], [`client`] (`status`, `plugins`,
//! `publish`, and the connection flags every command that talks to a
//! running host shares), [`ops`] (`dlq`, `replay`, `quarantine`), [`keys`]
//! (`hash-token`), [`dispatch`], [`new`] (plugin projects); [`lines`] holds the JSON lines `dispatch`
//! and `serve --stdin` read and write, [`table`] the CLI's tables. This
//! file parses the command line, sets up logging and span export, and runs
//! the command.
//!
//! A new command is a variant of [`Command`] (where it belongs in the
//! order `plugbus --help` shows), its module, and its arm in [`run`].

mod client;
mod dispatch;
mod inspect;
mod keys;
mod lines;
mod new;
mod ops;
mod serve;
mod table;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

/// plugbus: a host bus for event handlers written as WebAssembly components.
///
/// Tenants drop plugins (components of the WIT world plugbus:plugin/handler)
/// into <plugins-dir>/<tenant>/<plugin>.wasm, with an optional manifest
/// <plugin>.toml beside each. Every CloudEvent of a tenant reaches that
/// tenant's subscribed plugins, each under its own fuel, memory and time
/// limits.
#[derive(Parser)]
#[command(name = "plugbus", version, about, long_about)]
struct Cli {
    /// How log lines are written to stderr (default human; `serve` takes
    /// it from its configuration file when this is not given).
    #[arg(
        long,
        value_enum,
        global = true,
        env = "PLUGBUS_LOG_FORMAT",
        help_heading = "Logging"
    )]
    log_format: Option<LogFormat>,

    /// Which log lines are written: a level (error, warn, info, debug, trace)
    /// or a tracing filter such as `plugbus=debug,plugbus::plugin=info`.
    /// RUST_LOG is used when this is not given.
    #[arg(long, global = true, env = "PLUGBUS_LOG", help_heading = "Logging")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands, operators' first. Each variant's doc comment is its help:
/// the first paragraph, one line, is its summary in `plugbus --help`.
#[derive(Subcommand)]
enum Command {
    /// Runs the host: plugins, the durable event log and the HTTP API.
    ///
    /// Loads every tenant's plugins, watches the plugins directory and
    /// reloads a plugin when its files change, serves HTTP ingest, the
    /// admin API and /metrics, and with --stdin publishes CloudEvents read
    /// one per line from stdin. Every event is stored in the durable event
    /// log <data>/events.db (or in NATS JetStream, shared by several hosts,
    /// with [log] backend = "nats"); the plugins consume the log, at least once,
    /// with retries and dead letters; each delivery is written to stdout as
    /// one JSON line (as `dispatch` writes; the plugin_version field tells
    /// which version handled it). With --stdin, at the end of the input it
    /// waits until the plugins have handled what was published. A restart
    /// resumes every plugin where it left off.
    ///
    /// Replace a plugin by writing the new file beside it and renaming it
    /// over the old one (`mv`): it serves within milliseconds. A copy over
    /// the file in place (`cp`) works too; it is read once the writer has
    /// closed it. A new version that does not load leaves the old one
    /// serving, and the reason is logged. Compiled plugins are cached in
    /// <data>/compiled, so a restart or a revert skips compilation.
    ///
    /// Ctrl-C or SIGTERM stops reading, finishes the deliveries under way,
    /// and exits 0; what is stored and not yet delivered is delivered after
    /// the next start.
    Serve(serve::ServeArgs),

    /// Says whether a running host is ready, and sums up its plugins.
    ///
    /// Exit status 1 when the host is not ready.
    Status(client::StatusArgs),

    /// Lists a running host's plugins: version, status, cursor, lag, last error.
    Plugins(client::PluginsArgs),

    /// Shows a plugin's state on a running host: its keys and values, or one key's value.
    State(inspect::StateArgs),

    /// Lists the events a plugin emitted on a running host, newest first.
    Emits(inspect::EmitsArgs),

    /// Lists, shows, redrives and discards dead letters.
    ///
    /// A dead letter is an event a plugin gave up on after its last
    /// attempt, kept with every attempt's failure.
    Dlq(ops::DlqArgs),

    /// Moves a plugin's cursor, to deliver it the events from a point again.
    ///
    /// The point is a position in the event log or a time; the cursor may
    /// move back or forward.
    Replay(ops::ReplayArgs),

    /// Lists quarantined plugins, or lifts a plugin's quarantine.
    ///
    /// A plugin is quarantined (paused) after failing too many deliveries
    /// in a row; a new version, the end of the quarantine or `quarantine
    /// resume` lets it go on.
    Quarantine(ops::QuarantineArgs),

    /// Publishes events to a running host, with a tenant's token.
    ///
    /// One event from flags, or events from a JSON file (one event or an
    /// array of them, all or nothing), or from a file of JSON lines in
    /// batches.
    Publish(client::PublishArgs),

    /// Prints the SHA-256 that plugbus.toml stores for a token read from stdin.
    ///
    /// The hex digest goes in `token_sha256`.
    HashToken,

    /// Runs plugins over events from a file or stdin, in memory, and exits.
    ///
    /// Loads every tenant's plugins, dispatches CloudEvents read one per
    /// line (JSON format, the tenant in the extension attribute `tenant`)
    /// and everything the plugins emit in response, and writes one JSON line
    /// per delivery to stdout. Nothing is stored.
    ///
    /// Each output line holds: event_id, tenant, type, plugin,
    /// plugin_version, outcome (handled or failed), error_kind,
    /// error_message, fuel, micros, causationid (for emitted events) and the
    /// events the delivery emitted. An invalid input line is reported on
    /// stderr with its line number and reason; the valid lines are still
    /// dispatched.
    ///
    /// Exit status: 0 when every input line was dispatched, 1 when any was
    /// rejected, 2 when the host could not start.
    Dispatch(dispatch::DispatchArgs),

    /// Writes a new plugin project: Rust, Python or JavaScript.
    ///
    /// The project (in ./NAME, or --dir) holds a handler with state, its
    /// manifest NAME.toml, a native test, a README with the commands that
    /// test, build and install it, and a copy of the language's SDK and of
    /// the WIT contract, so it builds on its own. The templates are built
    /// into this binary.
    New(new::NewArgs),
}

/// The command line, with what the derive cannot say: the defaults that
/// `serve` takes from its configuration.
fn command_line() -> clap::Command {
    Cli::command().mut_subcommand("serve", serve::show_defaults)
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `serve` may take the log format and span export from its
    // configuration file.
    let (configured, otlp) = match logging_settings(&cli.command) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("plugbus: {e:#}");
            return ExitCode::from(2);
        }
    };
    let format = cli.log_format.unwrap_or(match configured {
        Some(plugbus::config::LogFormat::Json) => LogFormat::Json,
        _ => LogFormat::Human,
    });
    // Started before the async runtime, and shut down after it: its HTTP
    // client is a blocking one.
    let export = match otlp.as_ref().map(plugbus::telemetry::OtlpExport::start) {
        None => None,
        Some(Ok(export)) => Some(export),
        Some(Err(e)) => {
            eprintln!("plugbus: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = default_level(&cli.command);
    if let Err(e) = plugbus::telemetry::init_logging(
        matches!(format, LogFormat::Json),
        cli.log.as_deref(),
        default_level,
        export.as_ref(),
    ) {
        eprintln!("plugbus: {:#}", anyhow::Error::from(e));
        return ExitCode::from(2);
    }
    if let Some(otlp) = &otlp {
        tracing::info!(
            "exporting spans to {} (OTLP/HTTP, service.name {}, sample ratio {})",
            otlp.traces_url,
            otlp.service_name,
            otlp.sample_ratio
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plugbus: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Everything that matters has been awaited. What may remain is a
    // blocking read of stdin that no signal interrupts (tokio reads stdin on
    // a blocking thread), and dropping the runtime would wait for it.
    runtime.shutdown_background();
    if let Some(export) = export
        && let Err(e) = export.shutdown()
    {
        eprintln!("plugbus: {e}");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugbus: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The log level of a command when neither `--log` nor `RUST_LOG` says.
fn default_level(command: &Command) -> &'static str {
    match command {
        Command::Dispatch(_) | Command::Serve(_) => "info",
        // The client and operator commands print their own output: they
        // log only warnings unless asked for more.
        _ => "warn",
    }
}

/// The log format a command's configuration sets (`serve`'s file), and
/// where its spans are exported, if anywhere.
fn logging_settings(
    command: &Command,
) -> anyhow::Result<(
    Option<plugbus::config::LogFormat>,
    Option<plugbus::telemetry::OtlpSettings>,
)> {
    match command {
        Command::Serve(args) => {
            let (config, _) = serve::settings(args)?;
            Ok((Some(config.log_format), serve::otlp(args, &config)?))
        }
        _ => Ok((None, None)),
    }
}

/// Runs `command`; the blocking ones (the HTTP client and the log's
/// operator commands) on a blocking thread.
async fn run(command: Command) -> anyhow::Result<ExitCode> {
    /// Runs a blocking command on a blocking thread.
    async fn blocking(
        name: &str,
        command: impl FnOnce() -> anyhow::Result<ExitCode> + Send + 'static,
    ) -> anyhow::Result<ExitCode> {
        tokio::task::spawn_blocking(command)
            .await
            .with_context(|| format!("the {name} command failed"))?
    }
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Status(args) => blocking("status", move || client::status(args)).await,
        Command::Plugins(args) => blocking("plugins", move || client::plugins(args)).await,
        Command::Dlq(args) => blocking("dlq", move || ops::dlq(args)).await,
        Command::Replay(args) => blocking("replay", move || ops::replay(args)).await,
        Command::Quarantine(args) => blocking("quarantine", move || ops::quarantine(args)).await,
        Command::Publish(args) => blocking("publish", move || client::publish(args)).await,
        Command::State(args) => blocking("state", move || inspect::state(args)).await,
        Command::Emits(args) => blocking("emits", move || inspect::emits(args)).await,
        Command::HashToken => keys::hash_token(),
        Command::Dispatch(args) => dispatch::run(args).await,
        Command::New(args) => blocking("new", move || new::run(args)).await,
    }
}
