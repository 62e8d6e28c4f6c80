//! Operator commands on a data directory's event log: `plugbus dlq`,
//! `plugbus replay` and `plugbus quarantine`. They work while `plugbus serve` runs on the same
//! directory (SQLite serialises the writes); a running host picks up a
//! moved cursor within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use plugbus::log::{EventLog, SqliteLog, SqliteLogConfig};
use serde_json::json;

/// Where the log is.
#[derive(clap::Args)]
pub struct DataArg {
    /// The data directory of the host (`plugbus serve --data`).
    #[arg(long, value_name = "DIR", env = "PLUGBUS_DATA", default_value = "data")]
    data: PathBuf,
}

/// Which plugin.
#[derive(clap::Args)]
pub struct PluginArg {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The plugin's name (its file stem).
    #[arg(long)]
    plugin: String,
}

#[derive(clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand)]
enum DlqCommand {
    /// Lists a tenant's dead letters, one line each: position, plugin,
    /// event id and type, attempts, and the last failure.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Shows one dead letter as JSON: the event and every attempt (kind,
    /// message, fuel, plugin version, time).
    Show(DeadLetterArg),
    /// Delivers one dead letter again, to the plugin's current version, with
    /// retries as for any event. A running `plugbus serve` on the same data
    /// directory takes the request within a second: the dead letter is
    /// deleted once the event is handled, or gets the new attempts appended
    /// when it fails again.
    Redrive(DeadLetterArg),
    /// Deletes one dead letter.
    Discard(DeadLetterArg),
}

/// Which dead letter.
#[derive(clap::Args)]
struct DeadLetterArg {
    #[command(flatten)]
    plugin: PluginArg,
    /// The event's position in the log (from `dlq list`).
    #[arg(long)]
    seq: u64,
    #[command(flatten)]
    data: DataArg,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    plugin: PluginArg,
    /// Where to deliver from again: a position in the log, or an RFC 3339
    /// time (the first event appended at or after it).
    #[arg(long, value_name = "SEQ|TIME")]
    from: String,
    #[command(flatten)]
    data: DataArg,
}

#[derive(clap::Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    command: QuarantineCommand,
}

#[derive(clap::Subcommand)]
enum QuarantineCommand {
    /// Lists the quarantined plugins: tenant, plugin, the version that
    /// failed, and when the quarantine began and ends.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Lifts a plugin's quarantine: a running host delivers its waiting
    /// events again within a second.
    Resume {
        #[command(flatten)]
        plugin: PluginArg,
        #[command(flatten)]
        data: DataArg,
    },
}

/// Opens the log of a data directory that has one: an operator command
/// never creates an empty log by mistake.
fn open(data: &Path) -> anyhow::Result<SqliteLog> {
    if !data.join("events.db").is_file() {
        bail!(
            "{} has no event log (events.db); pass the data directory of `plugbus serve` with --data",
            data.display()
        );
    }
    Ok(SqliteLog::open(data, SqliteLogConfig::default())?)
}

fn check_names(tenant: &str, plugin: Option<&str>) -> anyhow::Result<()> {
    plugbus::manifest::validate_name(tenant).with_context(|| format!("tenant {tenant:?}"))?;
    if let Some(plugin) = plugin {
        plugbus::manifest::validate_name(plugin).with_context(|| format!("plugin {plugin:?}"))?;
    }
    Ok(())
}

/// Runs `plugbus dlq ...`. Blocking.
pub fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List {
            tenant,
            plugin,
            json,
            data,
        } => {
            check_names(&tenant, plugin.as_deref())?;
            let log = open(&data.data)?;
            let plugins = match plugin {
                Some(plugin) => vec![plugin],
                None => log.dead_letter_plugins(&tenant)?,
            };
            if !json {
                println!(
                    "{:>8}  {:<20} {:<24} {:<28} {:>8}  last failure",
                    "seq", "plugin", "event id", "type", "attempts"
                );
            }
            for plugin in plugins {
                for dead in log.dead_letters(&tenant, &plugin)? {
                    let last = dead.attempts.last();
                    let kind = last.map_or("-", |a| a.kind.as_str());
                    let message = last.map_or("", |a| a.message.as_str());
                    if json {
                        println!(
                            "{}",
                            json!({
                                "seq": dead.seq,
                                "plugin": plugin,
                                "event_id": dead.event.id,
                                "type": dead.event.ty,
                                "attempts": dead.attempts.len(),
                                "last_error_kind": kind,
                                "last_error": message,
                            })
                        );
                    } else {
                        println!(
                            "{:>8}  {:<20} {:<24} {:<28} {:>8}  {kind}: {message}",
                            dead.seq,
                            plugin,
                            dead.event.id,
                            dead.event.ty,
                            dead.attempts.len()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show(DeadLetterArg { plugin, seq, data }) => {
            check_names(&plugin.tenant, Some(&plugin.plugin))?;
            let log = open(&data.data)?;
            let Some(dead) = log
                .dead_letters(&plugin.tenant, &plugin.plugin)?
                .into_iter()
                .find(|d| d.seq == seq)
            else {
                bail!(
                    "{}/{} has no dead letter at {seq}",
                    plugin.tenant,
                    plugin.plugin
                );
            };
            let shown = json!({
                "seq": dead.seq,
                "tenant": plugin.tenant,
                "plugin": plugin.plugin,
                "event": dead.event.to_json_value(),
                "attempts": dead.attempts,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive(arg) => on_dead_letter(arg, EventLog::request_redrive, |name, seq| {
            format!(
                "redrive of the dead letter at {seq} of {name} requested; a running host delivers it to the plugin's current version"
            )
        }),
        DlqCommand::Discard(arg) => {
            on_dead_letter(arg, EventLog::discard_dead_letter, |name, seq| {
                format!("discarded the dead letter at {seq} of {name}")
            })
        }
    }
}

/// Does `action` on one dead letter and prints `done`; an error when the
/// plugin has no dead letter there.
fn on_dead_letter(
    DeadLetterArg { plugin, seq, data }: DeadLetterArg,
    action: fn(&SqliteLog, &str, &str, u64) -> plugbus::log::Pending<bool>,
    done: impl FnOnce(&str, u64) -> String,
) -> anyhow::Result<ExitCode> {
    check_names(&plugin.tenant, Some(&plugin.plugin))?;
    let log = open(&data.data)?;
    let name = format!("{}/{}", plugin.tenant, plugin.plugin);
    if !action(&log, &plugin.tenant, &plugin.plugin, seq).wait()? {
        bail!("{name} has no dead letter at {seq}");
    }
    println!("{}", done(&name, seq));
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus replay`. Blocking.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs { plugin, from, data } = args;
    check_names(&plugin.tenant, Some(&plugin.plugin))?;
    let log = open(&data.data)?;
    let done = plugbus::log::replay(&log, &plugin.tenant, &plugin.plugin, &from)?;
    println!(
        "{}/{}: cursor moved from {} to {}; delivery resumes at position {}",
        plugin.tenant,
        plugin.plugin,
        done.before,
        done.first - 1,
        done.first
    );
    Ok(ExitCode::SUCCESS)
}

/// A time in milliseconds since the epoch as RFC 3339, for people.
fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Runs `plugbus quarantine ...`. Blocking.
pub fn quarantine(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QuarantineCommand::List { json, data } => {
            let log = open(&data.data)?;
            let all = log.quarantines()?;
            if !json {
                println!(
                    "{:<20} {:<20} {:<14} {:<26} until",
                    "tenant", "plugin", "version", "since"
                );
            }
            for q in all {
                if json {
                    println!(
                        "{}",
                        json!({
                            "tenant": q.tenant,
                            "plugin": q.plugin,
                            "version": q.version,
                            "since": rfc3339_ms(q.since_ms),
                            "until": rfc3339_ms(q.until_ms),
                        })
                    );
                } else {
                    println!(
                        "{:<20} {:<20} {:<14} {:<26} {}",
                        q.tenant,
                        q.plugin,
                        q.version,
                        rfc3339_ms(q.since_ms),
                        rfc3339_ms(q.until_ms)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Resume { plugin, data } => {
            check_names(&plugin.tenant, Some(&plugin.plugin))?;
            let log = open(&data.data)?;
            let lift = plugbus::log::QuarantineChange::Lift {
                tenant: plugin.tenant.clone(),
                plugin: plugin.plugin.clone(),
            };
            if !log.set_quarantine(lift).wait()? {
                bail!("{}/{} is not quarantined", plugin.tenant, plugin.plugin);
            }
            println!(
                "lifted the quarantine of {}/{}; a running host delivers its events again",
                plugin.tenant, plugin.plugin
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
