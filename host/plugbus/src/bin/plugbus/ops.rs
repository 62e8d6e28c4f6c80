//! Operator commands on a host's event log: `plugbus dlq`, `plugbus
//! replay` and `plugbus quarantine`. They work on the data directory, also
//! while `plugbus serve` runs on it (SQLite serialises the writes; a running
//! host picks up a moved cursor within a second), or, with `--url`, through
//! a running host's HTTP API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use plugbus::api::types::{DeadLetterView, DeadLettersAnswer, PluginsAnswer, ReplayAnswer};
use plugbus::log::{DeadLetterStore, QuarantineStore, SqliteLog, SqliteLogConfig};
use serde_json::json;

use crate::client::Answer;
use crate::table::{self, Column};

/// Where the log is.
#[derive(clap::Args)]
pub struct DataArg {
    /// The data directory of the host (`plugbus serve --data`).
    #[arg(long, value_name = "DIR", env = "PLUGBUS_DATA", default_value = "data")]
    data: PathBuf,
    /// A running host's HTTP address: go through its API instead of the
    /// data directory.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// With --url: the tenant's token or the admin token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PLUGBUS_TOKEN",
        hide_env_values = true,
        requires = "url"
    )]
    token: Option<String>,
}

/// The log itself, or a running host's API.
enum Source {
    Log(SqliteLog),
    Http { url: String, token: String },
}

impl DataArg {
    fn source(&self) -> anyhow::Result<Source> {
        match &self.url {
            Some(url) => Ok(Source::Http {
                url: url.clone(),
                token: self
                    .token
                    .clone()
                    .context("--url needs --token (or PLUGBUS_TOKEN)")?,
            }),
            None => Ok(Source::Log(open(&self.data)?)),
        }
    }
}

impl Source {
    /// A request to the host's API; an error naming what it said unless
    /// it answered `ok` or 404 (`None`).
    fn call(&self, method: &str, path: &str) -> anyhow::Result<Option<Answer>> {
        let Source::Http { url, token } = self else {
            bail!("not a running host");
        };
        let answer = crate::client::call(url, token, method, path)?;
        if answer.status == 404 {
            return Ok(None);
        }
        Ok(Some(answer.ok()?))
    }

    /// The plugins of `tenant` that have dead letters.
    fn dead_letter_plugins(&self, tenant: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Source::Log(log) => Ok(log.dead_letter_plugins(tenant)?),
            Source::Http { .. } => {
                let answer: PluginsAnswer = self
                    .call("GET", &format!("/v1/tenants/{tenant}/plugins"))?
                    .with_context(|| format!("the host has no tenant {tenant:?} for this token"))?
                    .read()?;
                Ok(answer.plugins.into_iter().map(|p| p.plugin).collect())
            }
        }
    }

    /// `plugin`'s dead letters, as the API shows them.
    fn dead_letters(&self, tenant: &str, plugin: &str) -> anyhow::Result<Vec<DeadLetterView>> {
        match self {
            Source::Log(log) => Ok(log
                .dead_letters(tenant, plugin)?
                .into_iter()
                .map(DeadLetterView::from)
                .collect()),
            Source::Http { .. } => {
                let path = format!("/v1/tenants/{tenant}/plugins/{plugin}/dead-letters");
                Ok(match self.call("GET", &path)? {
                    Some(answer) => answer.read::<DeadLettersAnswer>()?.dead_letters,
                    None => Vec::new(),
                })
            }
        }
    }
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
        /// Only this tenant's (with --url, a tenant's token needs it).
        #[arg(long)]
        tenant: Option<String>,
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
/// The most bytes of tenant text in a table's last column.
pub const LAST_COLUMN_BYTES: usize = 160;

/// Tenant text for a table cell: escaped, and cut at 64 bytes.
pub fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    plugbus::text::escape(text, 64)
}

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
            let source = data.source()?;
            let plugins = match plugin {
                Some(plugin) => vec![plugin],
                None => source.dead_letter_plugins(&tenant)?,
            };
            let mut rows = Vec::new();
            for plugin in plugins {
                for dead in source.dead_letters(&tenant, &plugin)? {
                    let attempts = &dead.attempts;
                    let last = attempts.last();
                    let kind = last.map_or("-", |a| a.kind.as_str());
                    let message = last.map_or("", |a| a.message.as_str());
                    let text = |key: &str| dead.event[key].as_str().unwrap_or_default().to_owned();
                    if json {
                        println!(
                            "{}",
                            json!({
                                "seq": dead.seq,
                                "plugin": plugin,
                                "event_id": text("id"),
                                "type": text("type"),
                                "attempts": attempts.len(),
                                "last_error_kind": kind,
                                "last_error": message,
                            })
                        );
                    } else {
                        // Tenant text, escaped and cut: one line per
                        // row, and no escape sequence reaches the terminal.
                        rows.push(vec![
                            dead.seq.to_string(),
                            plugin.clone(),
                            cell(&text("id")).into_owned(),
                            cell(&text("type")).into_owned(),
                            attempts.len().to_string(),
                            format!(
                                "{kind}: {}",
                                plugbus::text::escape(message, LAST_COLUMN_BYTES)
                            ),
                        ]);
                    }
                }
            }
            if !json {
                table::print(
                    &[
                        Column::right("seq", 8).gap(2),
                        Column::left("plugin", 20),
                        Column::left("event id", 24),
                        Column::left("type", 28),
                        Column::right("attempts", 8).gap(2),
                        Column::left("last failure", 0).gap(0),
                    ],
                    rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show(DeadLetterArg { plugin, seq, data }) => {
            check_names(&plugin.tenant, Some(&plugin.plugin))?;
            let source = data.source()?;
            let Some(dead) = source
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
            let mut dead = serde_json::to_value(dead)?;
            dead["tenant"] = plugin.tenant.into();
            dead["plugin"] = plugin.plugin.into();
            println!("{}", serde_json::to_string_pretty(&dead)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive(arg) => on_dead_letter(arg, Action::Redrive),
        DlqCommand::Discard(arg) => on_dead_letter(arg, Action::Discard),
    }
}

/// What to do with one dead letter.
#[derive(Clone, Copy)]
enum Action {
    Redrive,
    Discard,
}

/// Does `action` on one dead letter and says so; an error when the
/// plugin has no dead letter there.
fn on_dead_letter(
    DeadLetterArg { plugin, seq, data }: DeadLetterArg,
    action: Action,
) -> anyhow::Result<ExitCode> {
    check_names(&plugin.tenant, Some(&plugin.plugin))?;
    let source = data.source()?;
    let (tenant, name) = (&plugin.tenant, &plugin.plugin);
    let path = format!("/v1/tenants/{tenant}/plugins/{name}/dead-letters/{seq}");
    let found = match (&source, action) {
        (Source::Log(log), Action::Redrive) => log.request_redrive(tenant, name, seq).wait()?,
        (Source::Log(log), Action::Discard) => log.discard_dead_letter(tenant, name, seq).wait()?,
        (Source::Http { .. }, Action::Redrive) => {
            source.call("POST", &format!("{path}/redrive"))?.is_some()
        }
        (Source::Http { .. }, Action::Discard) => source.call("DELETE", &path)?.is_some(),
    };
    if !found {
        bail!("{tenant}/{name} has no dead letter at {seq}");
    }
    match action {
        Action::Redrive => println!(
            "redrive of the dead letter at {seq} of {tenant}/{name} requested; a running host delivers it to the plugin's current version"
        ),
        Action::Discard => println!("discarded the dead letter at {seq} of {tenant}/{name}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus replay`. Blocking.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs { plugin, from, data } = args;
    check_names(&plugin.tenant, Some(&plugin.plugin))?;
    let (before, first) = match data.source()? {
        Source::Log(log) => {
            let done = plugbus::log::replay(&log, &plugin.tenant, &plugin.plugin, &from)?;
            (done.before, done.first)
        }
        source @ Source::Http { .. } => {
            let from_query =
                percent_encoding::utf8_percent_encode(&from, percent_encoding::NON_ALPHANUMERIC);
            let done: ReplayAnswer = source
                .call(
                    "POST",
                    &format!(
                        "/v1/tenants/{}/plugins/{}/replay?from={from_query}",
                        plugin.tenant, plugin.plugin
                    ),
                )?
                .with_context(|| {
                    format!(
                        "{}/{} has no cursor on this host",
                        plugin.tenant, plugin.plugin
                    )
                })?
                .read()?;
            (done.before, done.first)
        }
    };
    println!(
        "{}/{}: cursor moved from {before} to {}; delivery resumes at position {first}",
        plugin.tenant,
        plugin.plugin,
        first - 1
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

/// The quarantined plugins, of `tenant` or all: from the log, or from a
/// running host's plugin views (`/v1/tenants/{tenant}/plugins`, or
/// `/v1/admin/plugins` for all).
fn quarantines(
    source: &Source,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<plugbus::log::Quarantine>> {
    let all = match source {
        Source::Log(log) => log.quarantines()?,
        Source::Http { .. } => {
            let path = match tenant {
                Some(tenant) => format!("/v1/tenants/{tenant}/plugins"),
                None => "/v1/admin/plugins".to_owned(),
            };
            let answer: PluginsAnswer = source
                .call("GET", &path)?
                .with_context(|| format!("the host has no tenant {tenant:?} for this token"))?
                .read()?;
            answer
                .plugins
                .into_iter()
                .filter_map(|p| p.quarantine)
                .collect()
        }
    };
    Ok(all
        .into_iter()
        .filter(|q| tenant.is_none_or(|t| t == q.tenant))
        .collect())
}

/// Runs `plugbus quarantine ...`. Blocking.
pub fn quarantine(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QuarantineCommand::List { tenant, json, data } => {
            if let Some(tenant) = &tenant {
                check_names(tenant, None)?;
            }
            let all = quarantines(&data.source()?, tenant.as_deref())?;
            let mut rows = Vec::new();
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
                    rows.push(vec![
                        q.tenant,
                        q.plugin,
                        q.version,
                        rfc3339_ms(q.since_ms),
                        rfc3339_ms(q.until_ms),
                    ]);
                }
            }
            if !json {
                table::print(
                    &[
                        Column::left("tenant", 20),
                        Column::left("plugin", 20),
                        Column::left("version", 14),
                        Column::left("since", 26),
                        Column::left("until", 0).gap(0),
                    ],
                    rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Resume { plugin, data } => {
            check_names(&plugin.tenant, Some(&plugin.plugin))?;
            let (tenant, name) = (&plugin.tenant, &plugin.plugin);
            let lifted = match data.source()? {
                Source::Log(log) => log
                    .set_quarantine(plugbus::log::QuarantineChange::Lift {
                        tenant: tenant.clone(),
                        plugin: name.clone(),
                    })
                    .wait()?,
                remote @ Source::Http { .. } => remote
                    .call(
                        "POST",
                        &format!("/v1/tenants/{tenant}/plugins/{name}/resume"),
                    )?
                    .is_some(),
            };
            if !lifted {
                bail!("{tenant}/{name} is not quarantined");
            }
            println!(
                "lifted the quarantine of {tenant}/{name}; a running host delivers its events again"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
