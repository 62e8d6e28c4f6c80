//! The client of a running host, over its HTTP API: `plugbus publish`,
//! `plugbus plugins` and `plugbus status`. Human tables by default, JSON
//! with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use plugbus::api::types::{ErrorBody, IngestAnswer, PluginState, PluginsAnswer};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::table::{self, Column};

/// Where the host is, and who is asking.
#[derive(clap::Args)]
pub struct Remote {
    /// The host's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        env = "PLUGBUS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// A tenant's token (or the admin token), sent as a bearer token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PLUGBUS_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Print the host's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    remote: Remote,
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
    remote: Remote,
    /// One tenant's plugins (with that tenant's token or the admin token);
    /// every tenant's with the admin token when absent.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    remote: Remote,
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

/// A request without a body to `url` with `token`: its answer.
pub fn call(url: &str, token: &str, method: &str, path: &str) -> anyhow::Result<Answer> {
    let remote = Remote {
        url: url.to_owned(),
        token: token.to_owned(),
        json: false,
    };
    request(&remote, method, path, None)
}

/// A request's answer.
fn request(
    remote: &Remote,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
) -> anyhow::Result<Answer> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let auth = format!("Bearer {}", remote.token);
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
        let answer: IngestAnswer = request(
            &args.remote,
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
    if args.remote.json {
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
    let answer = request(
        &args.remote,
        "POST",
        "/v1/events",
        Some((content_type, body)),
    )?
    .ok()?;
    if args.remote.json {
        println!("{answer}");
    } else {
        let answer: IngestAnswer = answer.read()?;
        table::print(
            &[
                Column::left("id", 40),
                Column::right("seq", 10).gap(2),
                Column::left("duplicate", 0).gap(0),
            ],
            answer.accepted.iter().map(|a| {
                vec![
                    crate::ops::cell(&a.id).into_owned(),
                    a.seq.to_string(),
                    a.duplicate.to_string(),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus plugins`. Blocking.
pub fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.tenant {
        Some(tenant) => format!("/v1/tenants/{tenant}/plugins"),
        None => "/v1/admin/plugins".to_owned(),
    };
    let answer = request(&args.remote, "GET", &path, None)?.ok()?;
    if args.remote.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let answer: PluginsAnswer = answer.read()?;
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    table::print(
        &[
            Column::left("tenant", 20),
            Column::left("plugin", 24),
            Column::left("version", 14),
            Column::left("status", 15),
            Column::right("cursor", 10),
            Column::right("lag", 8).gap(2),
            Column::left("last error", 0).gap(0),
        ],
        answer.plugins.iter().map(|p| {
            vec![
                crate::ops::cell(&p.tenant).into_owned(),
                crate::ops::cell(&p.plugin).into_owned(),
                crate::ops::cell(p.version.as_deref().unwrap_or("-")).into_owned(),
                p.status.as_str().to_owned(),
                number(p.cursor),
                number(p.lag),
                // A manifest error's caret diagram spans lines: escaped,
                // it stays on the row.
                plugbus::text::escape(
                    p.last_error.as_deref().unwrap_or(""),
                    crate::ops::LAST_COLUMN_BYTES,
                )
                .into_owned(),
            ]
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus status`: readiness and a summary of the plugins (admin
/// token). Exit status 1 when the host is not ready.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let ready = request(&args.remote, "GET", "/readyz", None)?.status;
    let PluginsAnswer { plugins } = request(&args.remote, "GET", "/v1/admin/plugins", None)?
        .ok()?
        .read()?;
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
    if args.remote.json {
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
