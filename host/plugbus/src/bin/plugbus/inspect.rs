//! `plugbus state` and `plugbus emits`: what a plugin kept in its state
//! and the events it emitted, asked of a running host over its HTTP API
//! (`GET /v1/tenants/{tenant}/plugins/{plugin}/state[/{key}]` and
//! `.../emits`), with the tenant's token or the admin token. A table by
//! default, the host's JSON answer with `--json`.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use plugbus::api::types::{
    EmitsAnswer, Encoding, MAX_PAGE_LIMIT, StateAnswer, StateEntryView, StoredBytes,
};

use crate::client::{Connection, Tenants};
use crate::table::{self, Column};

/// The most bytes of tenant text in a table cell.
const CELL_BYTES: usize = 64;
/// The most bytes of a value in a table's last column.
const VALUE_BYTES: usize = 160;
/// The most bytes of one value printed whole (`plugbus state T/P KEY`).
const WHOLE_BYTES: usize = 1024 * 1024;

/// What a path segment or query value keeps unencoded: the unreserved
/// characters of RFC 3986.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(clap::Args)]
pub struct StateArgs {
    /// The plugin, as TENANT/PLUGIN (e.g. acme-pos/order-saga), or PLUGIN
    /// alone with a tenant's token.
    #[arg(value_name = "[TENANT/]PLUGIN")]
    plugin: String,
    /// One key: print its value whole.
    #[arg(value_name = "KEY")]
    key: Option<String>,
    /// Only the keys that start with this.
    #[arg(long, value_name = "PREFIX", conflicts_with = "key")]
    prefix: Option<String>,
    /// Only the keys after this one (the key a listing says to go on from).
    #[arg(long, value_name = "KEY", conflicts_with = "key")]
    after: Option<String>,
    /// The most keys listed.
    #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "key",
          value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_LIMIT as i64))]
    limit: u32,
    /// Print the host's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(clap::Args)]
pub struct EmitsArgs {
    /// The plugin, as TENANT/PLUGIN (e.g. acme-pos/order-saga), or PLUGIN
    /// alone with a tenant's token.
    #[arg(value_name = "[TENANT/]PLUGIN")]
    plugin: String,
    /// The most events listed, newest first.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_LIMIT as i64))]
    limit: u32,
    /// Only the events before this position (the position a listing says
    /// to go on from).
    #[arg(long, value_name = "SEQ")]
    before: Option<u64>,
    /// Print the host's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// The tenant and the plugin of `[TENANT/]PLUGIN`, each a valid name;
/// without `TENANT/`, the tenant is the token's (the host says whose it
/// is), and the admin token needs it.
fn tenant_plugin(connection: &Connection, text: &str) -> anyhow::Result<(String, String)> {
    let (tenant, plugin) = match text.split_once('/') {
        Some((tenant, plugin)) => (tenant.to_owned(), plugin),
        None => match connection.tenants(None)? {
            Tenants::One(tenant) => (tenant, text),
            Tenants::All => bail!(
                "with the admin token, name the plugin as TENANT/PLUGIN (e.g. acme-pos/order-saga), not {:?}",
                plugbus::text::escape(text, CELL_BYTES)
            ),
        },
    };
    let (tenant, plugin) = (tenant.as_str(), plugin);
    plugbus::manifest::validate_name(tenant).with_context(|| {
        format!(
            "tenant {:?}",
            plugbus::text::escape(tenant, CELL_BYTES).as_ref()
        )
    })?;
    plugbus::manifest::validate_name(plugin).with_context(|| {
        format!(
            "plugin {:?}",
            plugbus::text::escape(plugin, CELL_BYTES).as_ref()
        )
    })?;
    Ok((tenant.to_owned(), plugin.to_owned()))
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// `GET path` of the host: the body of a 2xx answer, or an error naming
/// the status and what the host said.
fn get(connection: &Connection, path: &str) -> anyhow::Result<String> {
    Ok(connection.call("GET", path)?.ok()?.to_string())
}

/// The body of an answer, read as the API type `T`.
fn read<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).context("the host answered with a body this client cannot read")
}

/// Stored bytes for a table cell, on one line: JSON text as stored, else
/// the text they hold, else `base64:…`; escaped and cut at `max` bytes.
fn shown(stored: &StoredBytes, max: usize) -> String {
    match stored.encoding {
        Encoding::Json => plugbus::text::escape(stored.value.get(), max).into_owned(),
        Encoding::Base64 => match stored.bytes().map(String::from_utf8) {
            Some(Ok(text)) => plugbus::text::escape(&text, max).into_owned(),
            _ => {
                let encoded: String = serde_json::from_str(stored.value.get()).unwrap_or_default();
                plugbus::text::escape(&format!("base64:{encoded}"), max).into_owned()
            }
        },
    }
}

/// Prints one value whole: JSON indented, text as it is, other bytes in
/// base64; every line escaped.
fn print_whole(entry: &StateEntryView) {
    let stored = entry.stored();
    let text = match stored.encoding {
        Encoding::Json => serde_json::from_str::<serde_json::Value>(entry.value.get())
            .and_then(|value| serde_json::to_string_pretty(&value))
            .unwrap_or_else(|_| entry.value.get().to_owned()),
        Encoding::Base64 => match stored.bytes().map(String::from_utf8) {
            Some(Ok(text)) => text,
            Some(Err(bytes)) => format!(
                "({} bytes, not text; base64) {}",
                bytes.as_bytes().len(),
                serde_json::from_str::<String>(entry.value.get()).unwrap_or_default()
            ),
            None => entry.value.get().to_owned(),
        },
    };
    let text = plugbus::text::truncate(&text, WHOLE_BYTES);
    for line in text.lines() {
        println!("{}", plugbus::text::escape(line, WHOLE_BYTES));
    }
}

/// Runs `plugbus state`. Blocking.
pub fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    let (tenant, plugin) = tenant_plugin(&args.connection, &args.plugin)?;
    let base = format!("/v1/tenants/{tenant}/plugins/{plugin}/state");
    if let Some(key) = &args.key {
        let text = get(&args.connection, &format!("{base}/{}", encode(key)))?;
        if args.json {
            println!("{text}");
        } else {
            print_whole(&read::<StateEntryView>(&text)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut query = format!("?limit={}", args.limit);
    if let Some(prefix) = &args.prefix {
        query.push_str(&format!("&prefix={}", encode(prefix)));
    }
    if let Some(after) = &args.after {
        query.push_str(&format!("&after={}", encode(after)));
    }
    let text = get(&args.connection, &format!("{base}{query}"))?;
    if args.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let answer: StateAnswer = read(&text)?;
    table::print(
        &[
            Column::text("key", 3, 48).gap(2),
            Column::text("value", 0, 100).gap(0),
        ],
        answer.entries.iter().map(|entry| {
            vec![
                plugbus::text::escape(&entry.key, CELL_BYTES).into_owned(),
                shown(&entry.stored(), VALUE_BYTES),
            ]
        }),
    );
    if let Some(after) = &answer.next_after {
        // Only a key that prints as it is can be pasted back: a cut or
        // escaped one would skip keys.
        // (A key is at most 512 bytes.)
        match plugbus::text::escape(after, 1024) {
            std::borrow::Cow::Borrowed(plain) => {
                eprintln!("more keys follow: add --after {plain:?}");
            }
            std::borrow::Cow::Owned(_) => eprintln!(
                "more keys follow: the next page starts after the key in next_after of --json"
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `plugbus emits`. Blocking.
pub fn emits(args: EmitsArgs) -> anyhow::Result<ExitCode> {
    let (tenant, plugin) = tenant_plugin(&args.connection, &args.plugin)?;
    let mut path = format!(
        "/v1/tenants/{tenant}/plugins/{plugin}/emits?limit={}",
        args.limit
    );
    if let Some(before) = args.before {
        path.push_str(&format!("&before={before}"));
    }
    let text = get(&args.connection, &path)?;
    if args.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let answer: EmitsAnswer = read(&text)?;
    let cell =
        |text: Option<&str>| plugbus::text::escape(text.unwrap_or("-"), CELL_BYTES).into_owned();
    table::print(
        &[
            Column::number("seq", 8).gap(2),
            Column::text("time", 24, 35),
            Column::text("type", 12, 40),
            Column::text("subject", 7, 32),
            Column::text("id", 36, 64),
            Column::text("caused by", 9, 36).gap(2),
            Column::text("data", 0, 80).gap(0),
        ],
        answer.emits.iter().map(|emit| {
            vec![
                emit.seq.to_string(),
                cell(Some(emit.time.as_deref().unwrap_or(&emit.appended_at))),
                cell(Some(&emit.ty)),
                cell(emit.subject.as_deref()),
                cell(Some(&emit.id)),
                cell(emit.causation_id.as_deref()),
                emit.data
                    .as_ref()
                    .map_or_else(String::new, |data| shown(data, VALUE_BYTES)),
            ]
        }),
    );
    if let Some(before) = answer.next_before {
        eprintln!("older events follow: add --before {before}");
    }
    Ok(ExitCode::SUCCESS)
}
