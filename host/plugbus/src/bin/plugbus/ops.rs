//! Operator commands on a host's event log: `plugbus dlq`, `plugbus
//! replay` and `plugbus quarantine`. They go through a running host's HTTP
//! API (`--url`, `--token`: the tenant is the token's, or with the admin
//! token every tenant's or `--tenant`'s), or, with `--data`, work on the
//! data directory itself: a stopped host's, or a running one's (SQLite
//! serialises the writes; a running host picks up a moved cursor within a
//! second).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use plugbus::api::types::{DeadLetterView, DeadLettersAnswer, PluginsAnswer, ReplayAnswer};
use plugbus::log::{DeadLetterStore, QuarantineStore, SqliteLog, SqliteLogConfig};
use serde_json::json;

use crate::client::{Answer, Connection, FAILURE, NAME, Tenants, check_names, plugin_views};
use crate::table::{self, Column};

/// Where the log is: a running host (the connection flags), or a data
/// directory.
#[derive(clap::Args)]
pub struct Target {
    #[command(flatten)]
    connection: Connection,
    /// Work on the event log in this data directory (`plugbus serve
    /// --data`) instead of through --url: for a stopped host, or on the
    /// host's machine. No token is needed; --tenant names the tenant. The
    /// embedded (SQLite) log only: for hosts on NATS (`[log] backend =
    /// "nats"`) use --url, through any of them.
    #[arg(long, value_name = "DIR", help_heading = "Connection")]
    data: Option<PathBuf>,
}

/// The log itself, or a running host's API.
enum Source {
    Log(SqliteLog),
    Http(Connection),
}

impl Target {
    fn source(&self) -> anyhow::Result<Source> {
        match &self.data {
            Some(data) => Ok(Source::Log(open(data)?)),
            None => Ok(Source::Http(self.connection.clone())),
        }
    }
}

impl Source {
    /// The tenants a command is about: `--tenant`'s, else over HTTP the
    /// token's tenant, or every tenant's for the admin token.
    fn tenants(&self, asked: Option<&str>) -> anyhow::Result<Tenants> {
        match self {
            Source::Log(_) => {
                if let Some(tenant) = asked {
                    check_names(tenant, None)?;
                }
                Ok(asked.map_or(Tenants::All, |t| Tenants::One(t.to_owned())))
            }
            Source::Http(connection) => connection.tenants(asked),
        }
    }

    /// The one tenant a command is about: `--tenant`'s, else the token's.
    fn tenant(&self, asked: Option<&str>) -> anyhow::Result<String> {
        match self {
            Source::Log(_) => {
                let tenant = asked.context("with --data, name the tenant with --tenant")?;
                check_names(tenant, None)?;
                Ok(tenant.to_owned())
            }
            Source::Http(connection) => connection.tenant(asked),
        }
    }

    /// A request to the host's API; an error naming what it said unless
    /// it answered `ok` or 404 (`None`).
    fn call(&self, method: &str, path: &str) -> anyhow::Result<Option<Answer>> {
        let Source::Http(connection) = self else {
            bail!("not a running host");
        };
        let answer = connection.call(method, path)?;
        if answer.status == 404 {
            return Ok(None);
        }
        Ok(Some(answer.ok()?))
    }

    /// The (tenant, plugin) pairs that may have dead letters, of `tenants`.
    fn dead_letter_plugins(&self, tenants: &Tenants) -> anyhow::Result<Vec<(String, String)>> {
        match (self, tenants) {
            (Source::Log(log), Tenants::One(tenant)) => Ok(log
                .dead_letter_plugins(tenant)?
                .into_iter()
                .map(|plugin| (tenant.clone(), plugin))
                .collect()),
            (Source::Log(_), Tenants::All) => {
                bail!("with --data, name the tenant with --tenant")
            }
            (Source::Http(connection), tenants) => {
                let answer: PluginsAnswer = plugin_views(connection, tenants)?.read()?;
                Ok(answer
                    .plugins
                    .into_iter()
                    .map(|p| (p.tenant, p.plugin))
                    .collect())
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
            Source::Http(_) => {
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
    /// The tenant: needed with --data or the admin token; with a tenant's
    /// token it is the token's (and this, if given, must name it).
    #[arg(long)]
    tenant: Option<String>,
    /// The plugin's name (its file stem).
    #[arg(long)]
    plugin: String,
}

impl PluginArg {
    /// The tenant and the plugin, checked.
    fn resolve(&self, source: &Source) -> anyhow::Result<(String, String)> {
        let tenant = source.tenant(self.tenant.as_deref())?;
        check_names(&tenant, Some(&self.plugin))?;
        Ok((tenant, self.plugin.clone()))
    }
}

#[derive(clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand)]
enum DlqCommand {
    /// Lists dead letters, one line each.
    ///
    /// Each line holds the event's position in the log, the tenant, the
    /// plugin, the event's id and type, the attempts, and the last
    /// failure's kind and message (`--json` has the whole message).
    List {
        /// Only this tenant's (needed with --data). A tenant's token lists
        /// its own; the admin token every tenant's when absent.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Shows one dead letter as JSON: the event and every attempt.
    ///
    /// Each attempt holds its failure's kind and message, the fuel used,
    /// the plugin version and the time.
    Show(DeadLetterArg),
    /// Delivers one dead letter again, to the plugin's current version.
    ///
    /// It is retried as any event is. A running `plugbus serve` takes the
    /// request within a second: the dead letter is deleted once the event
    /// is handled, or gets the new attempts appended when it fails again.
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
    target: Target,
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
    target: Target,
}

#[derive(clap::Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    command: QuarantineCommand,
}

#[derive(clap::Subcommand)]
enum QuarantineCommand {
    /// Lists the quarantined plugins: tenant, plugin, failed version, since, until.
    List {
        /// Only this tenant's. A tenant's token lists its own; the admin
        /// token (or --data) every tenant's when absent.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Lifts a plugin's quarantine: a running host delivers its waiting
    /// events again within a second.
    Resume {
        #[command(flatten)]
        plugin: PluginArg,
        #[command(flatten)]
        target: Target,
    },
}

/// Opens the log of a data directory that has one: an operator command
/// never creates an empty log by mistake.
fn open(data: &Path) -> anyhow::Result<SqliteLog> {
    if !data.join("events.db").is_file() {
        bail!(
            "{} has no event log (events.db); pass the data directory of `plugbus serve` with --data (a host whose log is in NATS: use --url instead)",
            data.display()
        );
    }
    Ok(SqliteLog::open(data, SqliteLogConfig::default())?)
}

/// A failure's message without the kind it starts with, when it does:
/// the table shows the kind in a column of its own.
fn without_kind<'a>(kind: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
}

/// Runs `plugbus dlq ...`. Blocking.
pub fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List {
            tenant,
            plugin,
            json,
            target,
        } => {
            let source = target.source()?;
            let tenants = source.tenants(tenant.as_deref())?;
            if let Some(plugin) = &plugin {
                plugbus::manifest::validate_name(plugin)
                    .with_context(|| format!("plugin {:?}", crate::client::cell(plugin)))?;
            }
            let plugins = match (&plugin, &tenants) {
                (Some(plugin), Tenants::One(tenant)) => vec![(tenant.clone(), plugin.clone())],
                _ => source
                    .dead_letter_plugins(&tenants)?
                    .into_iter()
                    .filter(|(_, p)| plugin.as_ref().is_none_or(|wanted| wanted == p))
                    .collect(),
            };
            let mut rows = Vec::new();
            for (tenant, plugin) in plugins {
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
                                "tenant": tenant,
                                "plugin": plugin,
                                "event_id": text("id"),
                                "type": text("type"),
                                "attempts": attempts.len(),
                                "last_error_kind": kind,
                                "last_error": message,
                            })
                        );
                    } else {
                        rows.push(vec![
                            dead.seq.to_string(),
                            tenant.clone(),
                            plugin.clone(),
                            text("id"),
                            text("type"),
                            attempts.len().to_string(),
                            kind.to_owned(),
                            without_kind(kind, message).to_owned(),
                        ]);
                    }
                }
            }
            if !json {
                table::print(
                    &[
                        Column::number("seq", 8).gap(2),
                        Column::text("tenant", 12, NAME),
                        Column::text("plugin", 16, NAME),
                        // A UUID whole.
                        Column::text("event id", 36, 40),
                        Column::text("type", 24, 40),
                        Column::number("attempts", 8).gap(2),
                        Column::text("kind", 17, 24),
                        Column::text("last failure", 0, FAILURE).gap(0),
                    ],
                    rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show(DeadLetterArg {
            plugin,
            seq,
            target,
        }) => {
            let source = target.source()?;
            let (tenant, plugin) = plugin.resolve(&source)?;
            let Some(dead) = source
                .dead_letters(&tenant, &plugin)?
                .into_iter()
                .find(|d| d.seq == seq)
            else {
                bail!("{tenant}/{plugin} has no dead letter at {seq}");
            };
            let mut dead = serde_json::to_value(dead)?;
            dead["tenant"] = tenant.into();
            dead["plugin"] = plugin.into();
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
    DeadLetterArg {
        plugin,
        seq,
        target,
    }: DeadLetterArg,
    action: Action,
) -> anyhow::Result<ExitCode> {
    let source = target.source()?;
    let (tenant, name) = plugin.resolve(&source)?;
    let path = format!("/v1/tenants/{tenant}/plugins/{name}/dead-letters/{seq}");
    let found = match (&source, action) {
        (Source::Log(log), Action::Redrive) => log.request_redrive(&tenant, &name, seq).wait()?,
        (Source::Log(log), Action::Discard) => {
            log.discard_dead_letter(&tenant, &name, seq).wait()?
        }
        (Source::Http(_), Action::Redrive) => {
            source.call("POST", &format!("{path}/redrive"))?.is_some()
        }
        (Source::Http(_), Action::Discard) => source.call("DELETE", &path)?.is_some(),
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
    let ReplayArgs {
        plugin,
        from,
        target,
    } = args;
    let source = target.source()?;
    let (tenant, plugin) = plugin.resolve(&source)?;
    let (before, first) = match &source {
        Source::Log(log) => {
            let done = plugbus::log::replay(log, &tenant, &plugin, &from)?;
            (done.before, done.first)
        }
        Source::Http(_) => {
            let from_query =
                percent_encoding::utf8_percent_encode(&from, percent_encoding::NON_ALPHANUMERIC);
            let done: ReplayAnswer = source
                .call(
                    "POST",
                    &format!("/v1/tenants/{tenant}/plugins/{plugin}/replay?from={from_query}"),
                )?
                .with_context(|| format!("{tenant}/{plugin} has no cursor on this host"))?
                .read()?;
            (done.before, done.first)
        }
    };
    println!(
        "{tenant}/{plugin}: cursor moved from {before} to {}; delivery resumes at position {first}",
        first - 1
    );
    Ok(ExitCode::SUCCESS)
}

/// The quarantined plugins of `tenants`: from the log, or from a
/// running host's plugin views.
fn quarantines(
    source: &Source,
    tenants: &Tenants,
) -> anyhow::Result<Vec<plugbus::log::Quarantine>> {
    let all = match source {
        Source::Log(log) => log.quarantines()?,
        Source::Http(connection) => {
            let answer: PluginsAnswer = plugin_views(connection, tenants)?.read()?;
            answer
                .plugins
                .into_iter()
                .filter_map(|p| p.quarantine)
                .collect()
        }
    };
    Ok(all
        .into_iter()
        .filter(|q| match tenants {
            Tenants::All => true,
            Tenants::One(tenant) => *tenant == q.tenant,
        })
        .collect())
}

/// Runs `plugbus quarantine ...`. Blocking.
pub fn quarantine(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QuarantineCommand::List {
            tenant,
            json,
            target,
        } => {
            let source = target.source()?;
            let tenants = source.tenants(tenant.as_deref())?;
            let mut rows = Vec::new();
            for q in quarantines(&source, &tenants)? {
                if json {
                    println!(
                        "{}",
                        json!({
                            "tenant": q.tenant,
                            "plugin": q.plugin,
                            "version": q.version,
                            "since": plugbus::clock::rfc3339_ms(q.since_ms),
                            "until": plugbus::clock::rfc3339_ms(q.until_ms),
                        })
                    );
                } else {
                    rows.push(vec![
                        q.tenant,
                        q.plugin,
                        q.version,
                        plugbus::clock::rfc3339_ms(q.since_ms),
                        plugbus::clock::rfc3339_ms(q.until_ms),
                    ]);
                }
            }
            if !json {
                table::print(
                    &[
                        Column::text("tenant", 12, NAME),
                        Column::text("plugin", 16, NAME),
                        Column::text("version", 12, 16),
                        Column::text("since", 20, 30),
                        Column::text("until", 0, 30).gap(0),
                    ],
                    rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Resume { plugin, target } => {
            let source = target.source()?;
            let (tenant, name) = plugin.resolve(&source)?;
            let lifted = match &source {
                Source::Log(log) => log
                    .set_quarantine(plugbus::log::QuarantineChange::Lift {
                        tenant: tenant.clone(),
                        plugin: name.clone(),
                    })
                    .wait()?,
                Source::Http(_) => source
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
