//! The client of a running host, over its HTTP API: `plugbus publish`,
//! `plugbus plugins` and `plugbus status`. Human tables by default, JSON
//! with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use plugbus::api::types::{ErrorBody, IngestAnswer, PluginState, PluginsAnswer, WhoAmI};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::table::{self, Column};

/// Where `plugbus` finds a running host unless told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the host is, and who is asking: the connection flags of every
/// command that talks to a running host.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// The running host's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        env = "PLUGBUS_URL",
        default_value = DEFAULT_URL,
        help_heading = "Connection"
    )]
    url: String,
    /// A tenant's token (the command works on that tenant) or the admin
    /// token (every tenant, or the one --tenant names), sent as a bearer
    /// token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PLUGBUS_TOKEN",
        hide_env_values = true,
        help_heading = "Connection"
    )]
    token: Option<String>,
}

/// Which tenants a command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// Every tenant's (the admin token without `--tenant`).
    All,
    /// One tenant's.
    One(String),
}

impl Connection {
    /// Whose the token is, as the host says (`GET /v1/whoami`).
    pub fn whoami(&self) -> anyhow::Result<WhoAmI> {
        let answer = self.request("GET", "/v1/whoami", None)?;
        match answer.status {
            401 => answer.ok().context("the host did not accept the token"),
            404 => bail!(
                "the host at {} has no /v1/whoami (a plugbus older than this command):                  name the tenant with --tenant and use the admin token",
                self.url
            ),
            _ => answer.ok(),
        }?
        .read()
    }

    /// The tenants a command is about: the one `--tenant` names (with the
    /// admin token, or a tenant token of that tenant), else the token's
    /// own tenant, else (the admin token) every tenant.
    pub fn tenants(&self, asked: Option<&str>) -> anyhow::Result<Tenants> {
        if let Some(tenant) = asked {
            check_names(tenant, None)?;
        }
        resolve(&self.whoami()?, asked)
    }

    /// The one tenant a command is about: as [`Connection::tenants`], but
    /// the admin token needs `--tenant`.
    pub fn tenant(&self, asked: Option<&str>) -> anyhow::Result<String> {
        match self.tenants(asked)? {
            Tenants::One(tenant) => Ok(tenant),
            Tenants::All => {
                bail!("with the admin token, name the tenant with --tenant")
            }
        }
    }

    /// A request without a body: its answer.
    pub fn call(&self, method: &str, path: &str) -> anyhow::Result<Answer> {
        self.request(method, path, None)
    }

    /// A request's answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> anyhow::Result<Answer> {
        let Some(token) = &self.token else {
            bail!(
                "no token: pass --token or set PLUGBUS_TOKEN (a tenant's token, or the admin token)"
            );
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let auth = format!("Bearer {token}");
        let response = match (method, body) {
            ("POST", Some((content_type, body))) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(body),
            ("POST", None) => agent.post(&url).header("Authorization", &auth).send_empty(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            _ => agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut response = response.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer of {url}"))?;
        Ok(Answer { status, text })
    }
}

/// The tenants a command is about, for a token that is `caller`'s and
/// the tenant `--tenant` names, if any; an error when a tenant's token is
/// given with another tenant's name.
fn resolve(caller: &WhoAmI, asked: Option<&str>) -> anyhow::Result<Tenants> {
    match (caller, asked) {
        (WhoAmI::Admin, None) => Ok(Tenants::All),
        (WhoAmI::Admin, Some(asked)) => Ok(Tenants::One(asked.to_owned())),
        (WhoAmI::Tenant { tenant }, None) => Ok(Tenants::One(tenant.clone())),
        (WhoAmI::Tenant { tenant }, Some(asked)) if asked == tenant => {
            Ok(Tenants::One(tenant.clone()))
        }
        (WhoAmI::Tenant { tenant }, Some(asked)) => bail!(
            "--tenant {asked} disagrees with the token, which is tenant {}'s: leave --tenant out, or use {asked}'s token or the admin token",
            cell(tenant)
        ),
    }
}

/// Checks the names of a tenant and a plugin given on the command line.
pub fn check_names(tenant: &str, plugin: Option<&str>) -> anyhow::Result<()> {
    plugbus::manifest::validate_name(tenant)
        .with_context(|| format!("tenant {:?}", cell(tenant)))?;
    if let Some(plugin) = plugin {
        plugbus::manifest::validate_name(plugin)
            .with_context(|| format!("plugin {:?}", cell(plugin)))?;
    }
    Ok(())
}

/// Tenant text for a message: escaped, and cut at 64 bytes.
pub fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    plugbus::text::escape(text, 64)
}

#[derive(clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print the host's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    /// A file with one CloudEvent in JSON format, or an array of them (a
    /// batch, all or nothing); `-` for stdin. The tenant is the token's.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ty", "source", "id", "subject", "data", "lines"])]
    file: Option<PathBuf>,
    /// A file of CloudEvents, one JSON object per line, published in
    /// batches of --batch-size with a progress bar; each batch is all or
    /// nothing, and the first refused batch stops the run.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ty", "source", "id", "subject", "data"])]
    lines: Option<PathBuf>,
    /// Events per request with --lines.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// The event's type.
    #[arg(long = "type", value_name = "TYPE", required_unless_present_any = ["file", "lines"])]
    ty: Option<String>,
    /// The event's source.
    #[arg(long, default_value = "/plugbus-cli")]
    source: Option<String>,
    /// The event's id (default: a new UUID).
    #[arg(long)]
    id: Option<String>,
    /// The event's subject.
    #[arg(long)]
    subject: Option<String>,
    /// The event's data, as JSON.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
}

#[derive(clap::Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    connection: Connection,
    /// Only this tenant's plugins (with the admin token; a tenant's token
    /// lists its own tenant's, and this must then name it). Every tenant's
    /// with the admin token when absent.
    #[arg(long)]
    tenant: Option<String>,
    /// Print the host's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
    /// Sum up only this tenant's plugins (as `plugins --tenant`).
    #[arg(long)]
    tenant: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// A host's answer to a request: its status and its body as sent.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as the host sent it.
    text: String,
}

impl Answer {
    /// The answer, or an error naming what the host said when it refused.
    pub fn ok(self) -> anyhow::Result<Self> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let status = self.status;
        let refusal = serde_json::from_str::<ErrorBody>(&self.text).ok();
        let message = refusal.as_ref().map_or("", |r| r.message.as_str());
        match refusal.as_ref().and_then(|r| r.attribute.as_deref()) {
            Some(attribute) => bail!("{status}: {message} (attribute {attribute})"),
            None => bail!("{status}: {message}"),
        }
    }

    /// The body, read as the API's type `T`.
    pub fn read<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(&self.text).with_context(|| {
            format!(
                "the host answered {} with a body this client cannot read",
                self.status
            )
        })
    }
}

impl std::fmt::Display for Answer {
    /// The body as the host sent it (what `--json` prints).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Publishes a file of JSON lines in batches, showing progress on a
/// terminal.
fn publish_lines(args: &PublishArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
        events.push(value);
    }
    let progress = indicatif::ProgressBar::new(events.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events published ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut stored, mut duplicates) = (0u64, 0u64);
    for batch in events.chunks(args.batch_size as usize) {
        let body = Value::Array(batch.to_vec()).to_string();
        let answer: IngestAnswer = args
            .connection
            .request(
                "POST",
                "/v1/events",
                Some(("application/cloudevents-batch+json", body)),
            )?
            .ok()
            .with_context(|| {
                format!(
                    "the batch from event {} was refused; the {} before it are stored",
                    stored + duplicates + 1,
                    stored + duplicates
                )
            })?
            .read()?;
        for accepted in answer.accepted {
            if accepted.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    let summary = json!({ "events": events.len(), "stored": stored, "duplicates": duplicates });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} events published: {stored} stored, {duplicates} duplicates",
            events.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus publish`. Blocking.
pub fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.lines {
        return publish_lines(&args, path);
    }
    let (content_type, body) = match &args.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let content_type = if value.is_array() {
                "application/cloudevents-batch+json"
            } else {
                "application/cloudevents+json"
            };
            (content_type, text)
        }
        None => {
            let mut event = json!({
                "specversion": "1.0",
                "id": args.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                "source": args.source,
                "type": args.ty,
            });
            if let Some(subject) = &args.subject {
                event["subject"] = subject.as_str().into();
            }
            if let Some(data) = &args.data {
                event["data"] = serde_json::from_str(data).context("--data is not JSON")?;
                event["datacontenttype"] = "application/json".into();
            }
            ("application/cloudevents+json", event.to_string())
        }
    };
    let answer = args
        .connection
        .request("POST", "/v1/events", Some((content_type, body)))?
        .ok()?;
    if args.json {
        println!("{answer}");
    } else {
        let answer: IngestAnswer = answer.read()?;
        table::print(
            &[
                // A UUID whole.
                Column::text("id", 36, 64),
                Column::number("seq", 10).gap(2),
                Column::text("duplicate", 0, 9).gap(0),
            ],
            answer
                .accepted
                .iter()
                .map(|a| vec![a.id.clone(), a.seq.to_string(), a.duplicate.to_string()]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The widest name of a tenant or a plugin: names are never cut.
pub const NAME: u16 = plugbus::manifest::MAX_NAME_LEN as u16;

/// The most of a failure's text a table shows; `--json` has all of it.
pub const FAILURE: u16 = 72;

/// The plugins of `tenants`: `/v1/admin/plugins` for all, else the
/// tenant's own route.
pub fn plugin_views(connection: &Connection, tenants: &Tenants) -> anyhow::Result<Answer> {
    let path = match tenants {
        Tenants::All => "/v1/admin/plugins".to_owned(),
        Tenants::One(tenant) => format!("/v1/tenants/{tenant}/plugins"),
    };
    connection.call("GET", &path)?.ok()
}

/// Runs `plugbus plugins`. Blocking.
pub fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let tenants = args.connection.tenants(args.tenant.as_deref())?;
    let answer = plugin_views(&args.connection, &tenants)?;
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let answer: PluginsAnswer = answer.read()?;
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    table::print(
        &[
            Column::text("tenant", 12, NAME),
            Column::text("plugin", 16, NAME),
            Column::text("version", 12, 16),
            Column::text("status", 14, 14),
            Column::number("cursor", 10),
            Column::number("lag", 8).gap(2),
            Column::text("last error", 0, FAILURE).gap(0),
        ],
        answer.plugins.iter().map(|p| {
            vec![
                p.tenant.clone(),
                p.plugin.clone(),
                p.version.clone().unwrap_or_else(|| "-".to_owned()),
                p.status.as_str().to_owned(),
                number(p.cursor),
                number(p.lag),
                // A manifest error's caret diagram spans lines: escaped
                // and cut by the table, it stays on the row.
                without_own_path(p.last_error.as_deref().unwrap_or(""), &p.tenant, &p.plugin)
                    .to_owned(),
            ]
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// A plugin's error without the path of its own file it starts with
/// (`<plugins>/<tenant>/<plugin>.toml: `): the row names the tenant and
/// the plugin already, and the column has room for the reason.
fn without_own_path<'a>(error: &'a str, tenant: &str, plugin: &str) -> &'a str {
    let first_line = error.lines().next().unwrap_or_default();
    for extension in ["toml", "wasm"] {
        let own = format!("/{tenant}/{plugin}.{extension}: ");
        if let Some(at) = first_line.find(&own) {
            return &error[at + own.len()..];
        }
    }
    error
}

/// Runs `plugbus status`: readiness and a summary of the plugins (every
/// tenant's with the admin token, the token's tenant's with a tenant's).
/// Exit status 1 when the host is not ready.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let ready = args.connection.call("GET", "/readyz")?.status;
    let tenants = args.connection.tenants(args.tenant.as_deref())?;
    let PluginsAnswer { plugins } = plugin_views(&args.connection, &tenants)?.read()?;
    let count = |s: PluginState| plugins.iter().filter(|p| p.status == s).count();
    let summary = json!({
        "ready": ready == 200,
        "plugins": plugins.len(),
        "active": count(PluginState::Active),
        "degraded": count(PluginState::Degraded),
        "failed_to_load": count(PluginState::FailedToLoad),
        "quarantined": count(PluginState::Quarantined),
        "lag": plugins.iter().filter_map(|p| p.lag).sum::<u64>(),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{}: {} plugins: {} active, {} degraded, {} failed to load, {} quarantined; {} events waiting",
            if ready == 200 { "ready" } else { "NOT READY" },
            summary["plugins"],
            summary["active"],
            summary["degraded"],
            summary["failed_to_load"],
            summary["quarantined"],
            summary["lag"]
        );
    }
    Ok(if ready == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
