//! The `plugbus` binary, run as an operator would.

use std::io::Write as _;
use std::process::{Command, Stdio};

use plugbus_artifacts as artifacts;

mod support;

fn plugins_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tenant = dir.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(
        artifacts::LOW_STOCK_ALERT,
        tenant.join("low-stock-alert.wasm"),
    )
    .expect("copy");
    std::fs::write(
        tenant.join("low-stock-alert.toml"),
        "subscribe = [\"inventory.stock_changed\"]\n[config]\nthreshold = \"10\"\n",
    )
    .expect("manifest");
    std::fs::copy(artifacts::FIXTURE_PANIC, tenant.join("panic.wasm")).expect("copy");
    std::fs::write(tenant.join("panic.toml"), "subscribe = [\"fixture.*\"]\n").expect("manifest");
    std::fs::write(tenant.join("broken.wasm"), "not wasm").expect("broken plugin");
    dir
}

const EVENTS: &str = r#"{"specversion":"1.0","id":"evt-1","source":"/pos/1","type":"inventory.stock_changed","subject":"sku-1","tenant":"acme-pos","data":{"sku":"sku-1","new_quantity":0}}

{"specversion":"1.0","id":"evt-2","source":"/pos/1","type":"inventory.stock_changed","time":"not a time","tenant":"acme-pos","data":{}}
{"specversion":"1.0","id":"evt-3","source":"/pos/1","type":"fixture.boom","tenant":"acme-pos"}
"#;

/// Runs `plugbus ARGS` with `stdin`; returns the exit status, the stdout
/// lines parsed as JSON, and stderr.
fn run_plugbus(args: &[&str], stdin: &str) -> (i32, Vec<serde_json::Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plugbus");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("plugbus finishes");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    (
        output.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run_dispatch(args: &[&str], stdin: &str) -> (i32, Vec<serde_json::Value>, String) {
    let mut all = vec!["dispatch"];
    all.extend_from_slice(args);
    run_plugbus(&all, stdin)
}

#[test]
fn dispatch_reports_every_delivery_and_rejects_bad_lines() {
    let dir = plugins_dir();
    let plugins = dir.path().to_str().expect("utf-8 path");
    let (code, lines, stderr) = run_dispatch(&["--plugins", plugins], EVENTS);
    // One input line was rejected: exit status 1, the line named on stderr.
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("line 3: rejected: attribute 'time'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("broken.wasm"),
        "the refused plugin is reported: {stderr}"
    );

    assert_eq!(lines.len(), 2, "{lines:#?}");
    let alert = &lines[0];
    assert_eq!(alert["event_id"], "evt-1");
    assert_eq!(alert["plugin"], "low-stock-alert");
    assert_eq!(alert["outcome"], "handled");
    assert_eq!(alert["plugin_version"].as_str().map(str::len), Some(12));
    assert!(alert["fuel"].as_u64().is_some_and(|f| f > 0));
    assert!(alert["micros"].as_u64().is_some());
    let emitted: Vec<_> = alert["emitted"]
        .as_array()
        .expect("emitted list")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(emitted, ["inventory.low_stock", "inventory.out_of_stock"]);

    let panic = &lines[1];
    assert_eq!(panic["event_id"], "evt-3");
    assert_eq!(panic["outcome"], "failed");
    assert_eq!(panic["error_kind"], "trap");
    assert!(
        panic["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("fixture panic on evt-3")),
        "{panic}"
    );
}

#[test]
fn dispatch_reads_a_file_and_exits_zero_when_all_lines_are_valid() {
    let dir = plugins_dir();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, EVENTS.lines().next().expect("first line")).expect("events file");
    let (code, lines, stderr) = run_dispatch(
        &[
            "--plugins",
            dir.path().to_str().expect("utf-8"),
            "--events",
            events.to_str().expect("utf-8"),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 1);
}

#[test]
fn a_missing_plugins_directory_is_reported() {
    let (code, lines, stderr) = run_dispatch(&["--plugins", "/nonexistent/plugbus"], "");
    assert_eq!(code, 2);
    assert!(lines.is_empty());
    assert!(stderr.contains("/nonexistent/plugbus"), "{stderr}");
}

#[test]
fn help_describes_every_subcommand() {
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["dispatch", "--help"])
        .output()
        .expect("run plugbus");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for flag in [
        "--plugins",
        "--events",
        "--fuel",
        "--memory-mib",
        "--timeout-ms",
        "--max-chain-depth",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn an_overlong_line_is_rejected_without_losing_the_next() {
    let dir = plugins_dir();
    let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(5 * 1024 * 1024));
    let input = format!("{long}{}\n", EVENTS.lines().next().expect("first line"));
    let (code, lines, stderr) =
        run_dispatch(&["--plugins", dir.path().to_str().expect("utf-8")], &input);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "line 1: rejected: the line is {} bytes long",
            long.len()
        )),
        "{stderr}"
    );
    assert_eq!(lines.len(), 1, "the valid second line is dispatched");
    assert_eq!(lines[0]["event_id"], "evt-1");
}

/// `plugbus serve --stdin`: a plugin replaced by rename while the host runs
/// handles the next events, the output names the version of each delivery,
/// and SIGTERM ends the host with status 0 while stdin is still open.
#[test]
fn serve_reloads_a_replaced_plugin_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    let wasm = tenant.join("watcher.wasm");
    std::fs::copy(artifacts::FIXTURE_NOOP, &wasm).expect("copy");
    std::fs::write(
        tenant.join("watcher.toml"),
        "subscribe = [\"order.*\"]\n[config]\ngreeting = \"v2\"\n",
    )
    .expect("manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .arg("serve")
        // No HTTP: tests run side by side.
        .args(["--listen", "off"])
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--data")
        .arg(data.path())
        .arg("--stdin")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plugbus serve");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (log_tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_log = |needle: &str| -> String {
        loop {
            let line = log
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("no log line with {needle:?}: {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    let mut deliver = |id: &str| -> serde_json::Value {
        writeln!(
            stdin,
            r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"order.created","tenant":"acme-pos"}}"#
        )
        .expect("write an event");
        stdin.flush().expect("flush");
        let line = stdout
            .next()
            .expect("a delivery line")
            .expect("read stdout");
        serde_json::from_str(&line).expect("JSON")
    };

    wait_log("watching");
    let first = deliver("evt-1");
    assert_eq!(first["outcome"], "handled");
    assert_eq!(first["emitted"].as_array().map(Vec::len), Some(0));
    let old_version = first["plugin_version"]
        .as_str()
        .expect("version")
        .to_owned();

    let staged = tenant.join(".watcher.wasm.new");
    std::fs::copy(artifacts::FIXTURE_PLAIN_BINDGEN, &staged).expect("stage");
    std::fs::rename(&staged, &wasm).expect("replace by rename");
    let replaced = wait_log("plugin replaced");
    assert!(replaced.contains(&old_version), "{replaced}");

    let second = deliver("evt-2");
    assert_eq!(second["outcome"], "handled");
    assert_ne!(second["plugin_version"], first["plugin_version"]);
    assert_eq!(second["emitted"][0]["type"], "plain.seen");
    assert_eq!(second["emitted"][0]["subject"], "v2");

    let terminated = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(terminated.success());
    let status = child.wait().expect("plugbus exits");
    assert_eq!(status.code(), Some(0));
    drop(stdin);
    let cached = std::fs::read_dir(data.path().join("compiled"))
        .expect("the compile cache exists")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .count();
    assert_eq!(cached, 2, "both versions are cached");
}

/// The compile cache may not live where tenants write.
#[test]
fn serve_refuses_a_data_directory_inside_the_plugins_directory() {
    let plugins = plugins_dir();
    let data = plugins.path().join("acme-pos").join(".data");
    let (code, lines, stderr) = run_plugbus(
        &[
            "serve",
            "--listen",
            "off",
            "--plugins",
            &plugins.path().to_string_lossy(),
            "--data",
            &data.to_string_lossy(),
        ],
        "",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(lines.is_empty());
    assert!(
        stderr.contains("lies inside the plugins directory"),
        "{stderr}"
    );
    // Nor the event log, with the compile cache off.
    let (code, _, stderr) = run_plugbus(
        &[
            "serve",
            "--listen",
            "off",
            "--plugins",
            &plugins.path().to_string_lossy(),
            "--data",
            &data.to_string_lossy(),
            "--no-compile-cache",
        ],
        "",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("lies inside the plugins directory"),
        "{stderr}"
    );
    assert!(!data.join("events.db").exists());
}

/// `plugbus serve --stdin` stores what it reads in `<data>/events.db` and
/// delivers it from there: at the end of the input it waits for the
/// plugins, a restart delivers only what is new, and an event published
/// again is stored once.
#[test]
fn serve_stores_events_durably_and_resumes_after_a_restart() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let parent = tempfile::tempdir().expect("data directory");
    // Created by serve, private to its user.
    let data = parent.path().join("state");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::AUDIT_LOG, tenant.join("audit.wasm")).expect("copy");
    let event = |id: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"order.created","tenant":"acme-pos"}}"#
        )
    };
    let args = [
        "serve",
        "--listen",
        "off",
        "--plugins",
        plugins.path().to_str().expect("utf-8 path"),
        "--data",
        data.to_str().expect("utf-8 path"),
        "--stdin",
    ];
    let input = [event("e-1"), event("e-2"), event("e-3"), "{not json".into()].join("\n");
    let (code, lines, stderr) = run_plugbus(&args, &input);
    assert_eq!(code, 0, "{stderr}");
    let mut ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, ["e-1", "e-2", "e-3"], "{stderr}");
    assert!(lines.iter().all(|l| l["outcome"] == "handled"), "{lines:?}");
    assert!(stderr.contains("line 4: rejected"), "{stderr}");
    assert!(data.join("events.db").is_file());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&data)
            .expect("data directory")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");

    let input = [event("e-3"), event("e-4")].join("\n");
    let (code, lines, stderr) = run_plugbus(&args, &input);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["e-4"], "only the new event: {stderr}");
    assert!(stderr.contains("line 1: a duplicate"), "{stderr}");
}

/// Runs `plugbus ARGS` without input; returns the status, stdout and stderr.
fn run_plain(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plugbus");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An event of `acme-pos` for the `mixed` fixture. All have one subject:
/// they keep their order, across retries too.
fn keyed_event(id: &str, ty: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/pos/1","type":"{ty}","subject":"order-1","tenant":"acme-pos"}}"#
    )
}

/// An operator lists, shows, redrives and discards dead letters, and
/// replays a plugin from a position, on the data directory of `plugbus
/// serve`.
#[test]
fn dead_letters_and_replay_from_the_command_line() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::FIXTURE_MIXED, tenant.join("mixed.wasm")).expect("copy");
    std::fs::write(
        tenant.join("mixed.toml"),
        "subscribe = [\"mix.*\"]\n[retry]\nmax_attempts = 2\n",
    )
    .expect("manifest");
    let plugins_dir = plugins.path().to_str().expect("utf-8 path");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let serve = [
        "serve",
        "--listen",
        "off",
        "--plugins",
        plugins_dir,
        "--data",
        data_dir,
        "--stdin",
    ];
    let input = [
        keyed_event("p-1", "mix.permanent"),
        keyed_event("r-1", "mix.retryable"),
        keyed_event("ok-1", "mix.ok"),
    ]
    .join("\n");
    let (code, lines, stderr) = run_plugbus(&serve, &input);
    assert_eq!(code, 0, "{stderr}");
    // p-1 once, r-1 twice (its two attempts), ok-1 once, in order.
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["p-1", "r-1", "r-1", "ok-1"], "{stderr}");

    let (code, out, err) = run_plain(&[
        "dlq", "list", "--tenant", "acme-pos", "--data", data_dir, "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert_eq!(listed[0]["event_id"], "p-1");
    assert_eq!(listed[0]["attempts"], 1);
    assert_eq!(listed[0]["last_error_kind"], "handler_permanent");
    assert_eq!(listed[1]["event_id"], "r-1");
    assert_eq!(listed[1]["attempts"], 2);
    let r_seq = listed[1]["seq"].as_u64().expect("seq").to_string();
    // The table: each position right-aligned under its heading.
    let (code, out, err) = run_plain(&["dlq", "list", "--tenant", "acme-pos", "--data", data_dir]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[0].starts_with("     seq  tenant       plugin"),
        "{out}"
    );
    assert!(
        rows[2].starts_with(&format!("{r_seq:>8}  {:<12} mixed ", "acme-pos")),
        "{out}"
    );

    let (code, out, err) = run_plain(&[
        "dlq", "show", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &r_seq, "--data",
        data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["event"]["id"], "r-1");
    assert_eq!(shown["attempts"][1]["kind"], "handler_retryable");
    assert!(
        shown["attempts"][0]["plugin_version"].is_string(),
        "{shown}"
    );

    // Redriven, r-1 fails twice more on the same version: its dead letter
    // then holds all four attempts.
    let (code, out, err) = run_plain(&[
        "dlq", "redrive", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &r_seq, "--data",
        data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("redrive"), "{out}");
    let (code, lines, stderr) = run_plugbus(&serve, "");
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["r-1", "r-1"], "{stderr}");
    let (code, out, err) = run_plain(&[
        "dlq", "show", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &r_seq, "--data",
        data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        shown["attempts"].as_array().map(Vec::len),
        Some(4),
        "{shown}"
    );
    let (code, _, err) = run_plain(&[
        "dlq", "redrive", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", "999", "--data",
        data_dir,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no dead letter at 999"), "{err}");

    let (code, _, err) = run_plain(&[
        "dlq", "discard", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &r_seq, "--data",
        data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_plain(&[
        "dlq", "discard", "--tenant", "acme-pos", "--plugin", "mixed", "--seq", &r_seq, "--data",
        data_dir,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no dead letter"), "{err}");

    // Replay from r-1's position: r-1 and ok-1 are delivered again.
    let (code, out, err) = run_plain(&[
        "replay", "--tenant", "acme-pos", "--plugin", "mixed", "--from", &r_seq, "--data", data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cursor moved"), "{out}");
    let (code, lines, stderr) = run_plugbus(&serve, "");
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["r-1", "r-1", "ok-1"], "{stderr}");

    // Replay from a time before every event: all of them again, in order.
    let (code, out, err) = run_plain(&[
        "replay",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
        "--from",
        "2000-01-01T00:00:00Z",
        "--data",
        data_dir,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("delivery resumes at position 1"), "{out}");
    let (code, lines, stderr) = run_plugbus(&serve, "");
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["p-1", "r-1", "r-1", "ok-1"], "{stderr}");
    // After every event: refused, naming the time.
    let (code, _, err) = run_plain(&[
        "replay",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
        "--from",
        "2999-01-01T00:00:00Z",
        "--data",
        data_dir,
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no event appended at or after 2999-01-01T00:00:00Z"),
        "{err}"
    );

    // Bad input is named.
    let (code, _, err) = run_plain(&[
        "replay", "--tenant", "acme-pos", "--plugin", "mixed", "--from", "999", "--data", data_dir,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("past the end of the log"), "{err}");
    let (code, _, err) = run_plain(&[
        "replay",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
        "--from",
        "yesterday",
        "--data",
        data_dir,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("\"yesterday\""), "{err}");
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run_plain(&[
        "dlq",
        "list",
        "--tenant",
        "acme-pos",
        "--data",
        empty.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("has no event log"), "{err}");
    assert!(!empty.path().join("events.db").exists());
}

/// `serve`'s retry and quarantine flags: one attempt per event, and a
/// pause after two failures in a row, during which the rest wait in the
/// log; `serve` still exits at the end of its input.
#[test]
fn serve_takes_retry_and_quarantine_flags() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::FIXTURE_MIXED, tenant.join("mixed.wasm")).expect("copy");
    std::fs::write(tenant.join("mixed.toml"), "subscribe = [\"mix.*\"]\n").expect("manifest");
    let plugins_dir = plugins.path().to_str().expect("utf-8 path");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let input = [
        keyed_event("r-1", "mix.retryable"),
        keyed_event("r-2", "mix.retryable"),
        keyed_event("r-3", "mix.retryable"),
        keyed_event("ok-1", "mix.ok"),
    ]
    .join("\n");
    let serve = |quarantine_after: &'static str| {
        [
            "serve",
            "--listen",
            "off",
            "--plugins",
            plugins_dir,
            "--data",
            data_dir,
            "--stdin",
            "--max-attempts",
            "1",
            "--quarantine-after",
            quarantine_after,
        ]
    };
    let (code, lines, stderr) = run_plugbus(&serve("2"), &input);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["r-1", "r-2"], "{stderr}");
    assert!(stderr.contains("quarantined"), "{stderr}");
    // Without quarantine, the next start delivers the two that waited.
    let (code, lines, stderr) = run_plugbus(&serve("0"), "");
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<_> = lines.iter().map(|l| l["event_id"].clone()).collect();
    assert_eq!(ids, ["r-3", "ok-1"], "{stderr}");
    let (code, out, err) = run_plain(&[
        "dlq", "list", "--tenant", "acme-pos", "--data", data_dir, "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let attempts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["attempts"].clone())
        .collect();
    assert_eq!(attempts, [1, 1, 1], "one attempt each: {out}");
}

/// An operator sees the quarantines a host recorded in the log and lifts
/// one; lifting a plugin that is not quarantined is an error naming it.
#[test]
fn quarantines_from_the_command_line() {
    use plugbus::log::{Quarantine, QuarantineChange, QuarantineStore, SqliteLog, SqliteLogConfig};
    let data = tempfile::tempdir().expect("data directory");
    let data_dir = data.path().to_str().expect("utf-8 path");
    {
        // What a consumer records when it quarantines a plugin.
        let log = SqliteLog::open(data.path(), SqliteLogConfig::default()).expect("log");
        let since_ms = 1_795_000_000_000;
        let begin = QuarantineChange::Begin(Quarantine {
            tenant: "acme-pos".into(),
            plugin: "mixed".into(),
            version: "0123456789ab".into(),
            since_ms,
            until_ms: since_ms + 300_000,
        });
        log.set_quarantine(begin).wait().expect("record");
    }
    let (code, out, err) = run_plain(&["quarantine", "list", "--json", "--data", data_dir]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(listed["plugin"], "mixed");
    assert_eq!(listed["version"], "0123456789ab");
    assert_eq!(listed["since"], "2026-11-18T11:06:40Z");
    let resume = [
        "quarantine",
        "resume",
        "--tenant",
        "acme-pos",
        "--plugin",
        "mixed",
        "--data",
        data_dir,
    ];
    let (code, out, err) = run_plain(&resume);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lifted"), "{out}");
    let (code, out, _) = run_plain(&["quarantine", "list", "--data", data_dir]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    let (code, _, err) = run_plain(&resume);
    assert_eq!(code, 2);
    assert!(err.contains("acme-pos/mixed is not quarantined"), "{err}");
}

/// A plugin's failure text reaches the operator's terminal escaped and on
/// one line per row: a panic message spans lines, and `forge-log`'s text
/// carries CR, LF and escape sequences.
#[test]
fn dead_letter_tables_escape_tenant_text() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::FIXTURE_PANIC, tenant.join("panic.wasm")).expect("copy");
    std::fs::write(
        tenant.join("panic.toml"),
        "subscribe = [\"boom.*\"]\n[retry]\nmax_attempts = 1\n",
    )
    .expect("manifest");
    std::fs::copy(artifacts::FIXTURE_HOSTILE, tenant.join("forger.wasm")).expect("copy");
    std::fs::write(
        tenant.join("forger.toml"),
        "subscribe = [\"forge.*\"]\n[retry]\nmax_attempts = 1\n[config]\nmode = \"forge-error\"\n",
    )
    .expect("manifest");
    let plugins_dir = plugins.path().to_str().expect("utf-8 path");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let input = [
        keyed_event("boom-1", "boom.now"),
        keyed_event("forge-1", "forge.now"),
    ]
    .join("\n");
    let (code, _, stderr) = run_plugbus(
        &[
            "serve",
            "--listen",
            "off",
            "--plugins",
            plugins_dir,
            "--data",
            data_dir,
            "--stdin",
        ],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, out, err) = run_plain(&["dlq", "list", "--tenant", "acme-pos", "--data", data_dir]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(
        rows.len(),
        3,
        "a heading and one line per dead letter:\n{out}"
    );
    assert!(
        rows.iter().any(|r| r.contains("fixture panic on boom-1")),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}') && !out.contains('\r'),
        "raw control characters reached the terminal: {out:?}"
    );
    assert!(out.contains("\\u{1b}") || out.contains("\\n"), "{out}");
}

/// The text of `plugbus ARGS` (stdout), whitespace collapsed: wrapped help
/// reads as one line.
fn help_text(args: &[&str]) -> String {
    let (code, out, err) = run_plain(args);
    assert_eq!(code, 0, "{err}");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `plugbus --help` lists the operator's commands first, each with a
/// one-line summary, and no benchmark commands; each command's own help
/// starts with that line.
#[test]
fn help_lists_operator_commands_first_in_one_line_each() {
    let (code, out, err) = run_plain(&["--help"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    for line in &listed {
        // A name at two spaces' indent: a wrapped summary would go on
        // indented further.
        assert!(
            line.starts_with("  ") && !line.starts_with("   "),
            "a summary spans lines:\n{out}"
        );
    }
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!names.iter().any(|n| n.contains("bench")), "{names:?}");
    let order = [
        "serve",
        "status",
        "plugins",
        "state",
        "emits",
        "dlq",
        "replay",
        "quarantine",
        "publish",
        "hash-token",
        "dispatch",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|name| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} is not listed: {names:?}"))
        })
        .collect();
    assert!(at.is_sorted(), "not in the operator's order: {names:?}");
    assert_eq!(at[0], 0, "serve comes first: {names:?}");
    // Each command's own help opens with its summary, then a blank line.
    for name in order {
        let (code, out, err) = run_plain(&[name, "-h"]);
        assert_eq!(code, 0, "{err}");
        let summary = listed
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.trim_start()[name.len()..].trim())
            .unwrap_or_default();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(summary), "{name}:\n{out}");
        assert_eq!(lines.next(), Some(""), "{name}:\n{out}");
    }
}

/// Every flag with a default shows it in `--help`: `serve`'s flags that
/// plugbus.toml may set show the embedded configuration's value and the
/// key that overrides it; the connection flags show their address.
#[test]
fn help_shows_the_default_of_every_flag() {
    let config = plugbus::config::Config::default();
    let serve = help_text(&["serve", "--help"]);
    for (flag, value, key) in [
        ("--fuel", config.limits.fuel, "limits.fuel"),
        (
            "--memory-mib",
            config.limits.memory_mib,
            "limits.memory_mib",
        ),
        (
            "--timeout-ms",
            config.limits.timeout_ms,
            "limits.timeout_ms",
        ),
        (
            "--retain-hours",
            config.delivery.retain_hours,
            "delivery.retain_hours",
        ),
        (
            "--max-attempts",
            u64::from(config.delivery.max_attempts),
            "delivery.max_attempts",
        ),
        (
            "--quarantine-after",
            u64::from(config.delivery.quarantine_after),
            "delivery.quarantine_after",
        ),
        (
            "--dedupe-hours",
            config.delivery.dedupe_hours,
            "delivery.dedupe_hours",
        ),
    ] {
        let shown = format!("[default: {value}, or plugbus.toml's {key}]");
        let from = serve
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing: {serve}"));
        // The flag's own help, up to the next flag.
        let own = &serve[from..];
        let own = &own[..own[2..].find(" --").map_or(own.len(), |end| end + 2)];
        assert!(own.contains(&shown), "{flag}: {shown} not in {own:?}");
    }
    for shown in [
        "[default: 127.0.0.1:8080, or plugbus.toml's listen]",
        "[default: data, or plugbus.toml's data_dir]",
        "[default: reuse]",
        "[default: 32]",
    ] {
        assert!(serve.contains(shown), "{shown} not in {serve}");
    }
    // Short help too.
    let short = help_text(&["serve", "-h"]);
    assert!(
        short.contains(&format!(
            "[default: {}, or plugbus.toml's limits.fuel]",
            config.limits.fuel
        )),
        "{short}"
    );
    let dispatch = help_text(&["dispatch", "--help"]);
    assert!(
        dispatch.contains(&format!("[default: {}]", config.limits.fuel)),
        "{dispatch}"
    );
    // One connection default for every command that talks to a host.
    for command in [
        &["status"][..],
        &["plugins"],
        &["publish"],
        &["dlq", "list"],
        &["replay"],
        &["quarantine", "resume"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = help_text(&args);
        assert!(
            help.contains("--url <URL>") && help.contains("[default: http://127.0.0.1:8080]"),
            "{command:?}: {help}"
        );
        assert!(help.contains("[env: PLUGBUS_TOKEN]"), "{command:?}: {help}");
    }
}

/// A `plugbus serve` with HTTP, acme-pos's and globex-retail's tokens and
/// an admin token, over `plugins`.
fn serve_http(plugins: &std::path::Path, data: &std::path::Path) -> support::Server {
    let hash = plugbus::config::hash_token;
    let config = data.join("plugbus.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nplugins_dir = \"{}\"\ndata_dir = \"{}\"\n\
             [admin]\ntoken_sha256 = \"{}\"\n\
             [tenants.acme-pos]\ntoken_sha256 = \"{}\"\n\
             [tenants.globex-retail]\ntoken_sha256 = \"{}\"\n",
            plugins.display(),
            data.join("data").display(),
            hash(ADMIN_TOKEN),
            hash(ACME_TOKEN),
            hash(GLOBEX_TOKEN),
        ),
    )
    .expect("write the configuration");
    support::Server::start(&config)
}

const ACME_TOKEN: &str = "acme-cli-token";
const GLOBEX_TOKEN: &str = "globex-cli-token";
const ADMIN_TOKEN: &str = "admin-cli-token";

/// Where each column of a table's header starts (a word after two
/// spaces or at the start); `names` are the headers of more than one
/// word.
fn column_starts(header: &str, names: &[&str]) -> Vec<(String, usize)> {
    names
        .iter()
        .map(|name| {
            let at = header
                .find(&format!(" {name}"))
                .map(|at| at + 1)
                .or_else(|| header.starts_with(name).then_some(0))
                .unwrap_or_else(|| panic!("no column {name:?} in {header:?}"));
            ((*name).to_owned(), at)
        })
        .collect()
}

/// Each row has a left-aligned column's text start where its header
/// does (the last column's may be empty).
fn assert_aligned(out: &str, names: &[&str]) {
    let mut lines = out.lines();
    let header = lines.next().expect("a header");
    let starts = column_starts(header, names);
    for row in lines {
        let chars: Vec<char> = row.chars().collect();
        for (i, (name, at)) in starts.iter().enumerate() {
            if i + 1 == starts.len() && chars.len() <= *at {
                continue;
            }
            assert!(
                chars.get(*at).is_some_and(|c| *c != ' ')
                    && (*at == 0 || chars.get(at - 1) == Some(&' ')),
                "column {name:?} does not start at {at} in:\n{row}\nof\n{out}"
            );
        }
    }
}

/// `plugbus plugins` with a tenant's token lists that tenant's plugins,
/// and refuses another tenant's name; the admin token lists every
/// tenant's, or `--tenant`'s. The table keeps one line per plugin and its
/// columns in line whatever the names and errors: a name past 20
/// characters, a manifest error's multi-line caret diagram, and control
/// characters and escape sequences in the manifest are escaped and cut
/// to the column.
#[test]
fn plugins_takes_the_tenant_from_the_token() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let acme = plugins.path().join("acme-pos");
    let globex = plugins.path().join("globex-retail");
    std::fs::create_dir_all(&acme).expect("tenant directory");
    std::fs::create_dir_all(&globex).expect("tenant directory");
    let long_name = "audit-with-a-name-past-twenty-characters";
    std::fs::copy(artifacts::AUDIT_LOG, acme.join("audit.wasm")).expect("copy");
    std::fs::copy(artifacts::AUDIT_LOG, acme.join(format!("{long_name}.wasm"))).expect("copy");
    std::fs::copy(artifacts::AUDIT_LOG, acme.join("broken.wasm")).expect("copy");
    // Not TOML: the error quotes the line under a caret diagram, ESC
    // and all.
    std::fs::write(
        acme.join("broken.toml"),
        "subscribe = [\"order.*\"\n\u{1b}[31mred = \u{7}\n",
    )
    .expect("manifest");
    std::fs::copy(artifacts::AUDIT_LOG, globex.join("ledger.wasm")).expect("copy");
    let server = serve_http(plugins.path(), data.path());
    let plugbus = |args: &[&str], token: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(args)
            .env("PLUGBUS_URL", &server.url)
            .env("PLUGBUS_TOKEN", token)
            .output()
            .expect("run plugbus");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The tenant's token: its own plugins, without --tenant.
    let (code, out, err) = plugbus(&["plugins", "--json"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mut listed: Vec<&str> = answer["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["plugin"].as_str().unwrap_or_default())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["audit", long_name, "broken"], "{out}");
    let (code, _, err) = plugbus(&["plugins", "--tenant", "acme-pos"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = plugbus(&["plugins", "--tenant", "globex-retail"], ACME_TOKEN);
    assert_eq!(code, 2);
    assert!(
        err.contains("--tenant globex-retail disagrees with the token, which is tenant acme-pos's"),
        "{err}"
    );
    let (code, out, err) = plugbus(&["status"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ready: 3 plugins: 2 active"), "{out}");

    // The admin token: every tenant's, or --tenant's.
    let (code, out, err) = plugbus(&["plugins"], ADMIN_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("globex-retail") && out.contains("ledger"),
        "{out}"
    );
    let (code, out, err) = plugbus(&["plugins", "--tenant", "globex-retail"], ADMIN_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ledger") && !out.contains("acme-pos"), "{out}");

    // The table: a heading and one line per plugin, in columns.
    let (code, out, err) = plugbus(&["plugins"], ACME_TOKEN);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 4, "a heading and one line per plugin:\n{out}");
    assert!(
        rows[0].starts_with("tenant       plugin "),
        "a stable heading: {out}"
    );
    assert_aligned(
        &out,
        &["tenant", "plugin", "version", "status", "last error"],
    );
    assert!(rows.iter().any(|r| r.contains(long_name)), "{out}");
    let broken = rows
        .iter()
        .find(|r| r.contains("broken"))
        .expect("the broken plugin's row");
    assert!(broken.contains("failed_to_load"), "{out}");
    assert!(
        broken.ends_with('…'),
        "the error is cut to its column: {out}"
    );
    assert!(broken.contains("\\n"), "its lines are escaped: {out}");
    assert!(
        broken.contains("invalid manifest: TOML parse error"),
        "the reason, without the file's path: {out}"
    );
    assert!(broken.contains("\\u{1b}"), "ESC is escaped: {out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'),
        "raw control characters reached the terminal: {out:?}"
    );
}

/// `dlq list` keeps its columns in line with a plugin name past 20
/// characters and UUID event ids, and names a failure's kind once: in its
/// own column, not again at the start of the message (`timeout:`).
#[test]
fn dead_letter_table_columns_stay_in_line() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    let sleeper = "a-sleeper-with-a-name-past-twenty";
    std::fs::copy(
        artifacts::FIXTURE_SLEEPER,
        tenant.join(format!("{sleeper}.wasm")),
    )
    .expect("copy");
    std::fs::write(
        tenant.join(format!("{sleeper}.toml")),
        "subscribe = [\"slow.*\"]\n[retry]\nmax_attempts = 1\n[limits]\ntimeout_ms = 100\n\
         [config]\nmode = \"sleep\"\nmillis = \"600000\"\n",
    )
    .expect("manifest");
    std::fs::copy(artifacts::FIXTURE_MIXED, tenant.join("mixed.wasm")).expect("copy");
    std::fs::write(
        tenant.join("mixed.toml"),
        "subscribe = [\"mix.*\"]\n[retry]\nmax_attempts = 1\n",
    )
    .expect("manifest");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let uuid = "0192f5b2-7c1e-7a3b-9c4d-2e5f6a7b8c9d";
    let input = [
        keyed_event(uuid, "slow.now"),
        keyed_event("p-1", "mix.permanent"),
        keyed_event("0192f5b2-7c1e-7a3b-9c4d-2e5f6a7b8c9e", "mix.permanent"),
    ]
    .join("\n");
    let (code, lines, stderr) = run_plugbus(
        &[
            "serve",
            "--listen",
            "off",
            "--plugins",
            plugins.path().to_str().expect("utf-8 path"),
            "--data",
            data_dir,
            "--stdin",
        ],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 3, "{stderr}");
    let (code, out, err) = run_plain(&["dlq", "list", "--tenant", "acme-pos", "--data", data_dir]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(
        rows.len(),
        4,
        "a heading and one line per dead letter:\n{out}"
    );
    assert_aligned(
        &out,
        &[
            "tenant",
            "plugin",
            "event id",
            "type",
            "kind",
            "last failure",
        ],
    );
    let slow = rows
        .iter()
        .find(|r| r.contains(sleeper))
        .unwrap_or_else(|| panic!("the sleeper's dead letter: {out}"));
    assert!(slow.contains(uuid), "the UUID whole: {out}");
    assert!(slow.contains(" timeout "), "{out}");
    assert!(!out.contains("timeout: "), "the kind said twice: {out}");
    // The header's end of `attempts` is where each row's count ends.
    let end = rows[0].find("attempts").expect("attempts") + "attempts".len();
    for row in &rows[1..] {
        assert_eq!(row.get(end - 1..end), Some("1"), "{out}");
    }
    // With --data and no --tenant, the command says what it needs.
    let (code, _, err) = run_plain(&["dlq", "list", "--data", data_dir]);
    assert_eq!(code, 2);
    assert!(err.contains("--tenant"), "{err}");
}

/// `plugbus state` and `plugbus emits` against a running `plugbus serve`:
/// the `order-saga` example, sent an order with `plugbus publish`, keeps
/// the order in its state and emits `payment.requested`; both commands
/// show them, as a table and as JSON, to the tenant's token, and another
/// tenant's token is told there is no such tenant.
#[test]
fn state_and_emits_show_what_a_plugin_kept_and_emitted() {
    const ACME: &str = ACME_TOKEN;
    const GLOBEX: &str = GLOBEX_TOKEN;
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::ORDER_SAGA, tenant.join("order-saga.wasm")).expect("copy");
    std::fs::write(
        tenant.join("order-saga.toml"),
        "subscribe = [\"order.placed\", \"payment.completed\", \"payment.failed\"]\n",
    )
    .expect("manifest");
    let server = serve_http(plugins.path(), data.path());
    let url = server.url.clone();
    let cli = |args: &[&str], token: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(args)
            .args(["--url", &url])
            .env("PLUGBUS_TOKEN", token)
            .output()
            .expect("run plugbus");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, _, stderr) = cli(
        &[
            "publish",
            "--type",
            "order.placed",
            "--id",
            "order-evt-1",
            "--data",
            r#"{"order_id":"o-1","total_cents":1250,"items":[{"sku":"sku-1","quantity":2}]}"#,
        ],
        ACME,
    );
    assert_eq!(code, 0, "{stderr}");

    // The delivery commits its state and emit a moment after the publish
    // is answered: ask until they are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let state: plugbus::api::types::StateAnswer = loop {
        let (code, stdout, stderr) = cli(&["state", "acme-pos/order-saga", "--json"], ACME);
        assert_eq!(code, 0, "{stderr}");
        let state: plugbus::api::types::StateAnswer =
            serde_json::from_str(&stdout).expect("the state as JSON");
        if !state.entries.is_empty() {
            break state;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the order never reached the state"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(state.entries.len(), 1);
    assert_eq!(state.entries[0].key, "order/o-1");
    assert_eq!(
        state.entries[0].encoding,
        plugbus::api::types::Encoding::Json
    );
    let order: serde_json::Value =
        serde_json::from_str(state.entries[0].value.get()).expect("the order is JSON");
    assert_eq!(order["status"], "awaiting_payment");

    let (code, table, stderr) = cli(&["state", "acme-pos/order-saga"], ACME);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("key") && lines[0].contains("value"),
        "{table}"
    );
    assert!(lines[1].starts_with("order/o-1"), "{table}");
    assert!(
        lines[1].contains(r#""status":"awaiting_payment""#),
        "{table}"
    );

    let (code, value, stderr) = cli(&["state", "acme-pos/order-saga", "order/o-1"], ACME);
    assert_eq!(code, 0, "{stderr}");
    assert!(value.contains(r#""status": "awaiting_payment""#), "{value}");
    let (code, _, stderr) = cli(&["state", "acme-pos/order-saga", "order/o-9"], ACME);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("404") && stderr.contains("order/o-9"),
        "{stderr}"
    );

    let (code, stdout, stderr) = cli(&["emits", "acme-pos/order-saga", "--json"], ACME);
    assert_eq!(code, 0, "{stderr}");
    let emits: plugbus::api::types::EmitsAnswer =
        serde_json::from_str(&stdout).expect("the emits as JSON");
    assert_eq!(emits.emits.len(), 1, "{stdout}");
    let emit = &emits.emits[0];
    assert_eq!(emit.ty, "payment.requested");
    assert_eq!(emit.subject.as_deref(), Some("o-1"));
    assert_eq!(emit.causation_id.as_deref(), Some("order-evt-1"));
    let (code, table, stderr) = cli(&["emits", "acme-pos/order-saga", "--limit", "5"], ACME);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for needle in [
        emit.seq.to_string().as_str(),
        "payment.requested",
        "o-1",
        emit.id.as_str(),
        "order-evt-1",
        r#""amount_cents":1250"#,
    ] {
        assert!(lines[1].contains(needle), "{needle} not in {table}");
    }

    // Another tenant's token: no such tenant. A name that is not one.
    for command in ["state", "emits"] {
        let (code, _, stderr) = cli(&[command, "acme-pos/order-saga"], GLOBEX);
        assert_ne!(code, 0);
        assert!(
            stderr.contains("404") && stderr.contains("no tenant"),
            "{stderr}"
        );
    }
    // With a tenant's token the plugin alone is enough: the tenant is the
    // token's. The admin token needs TENANT/PLUGIN.
    let (code, alone, stderr) = cli(&["state", "order-saga"], ACME);
    assert_eq!(code, 0, "{stderr}");
    assert!(alone.contains("order/o-1"), "{alone}");
    let (code, _, stderr) = cli(&["state", "order-saga"], ADMIN_TOKEN);
    assert_ne!(code, 0);
    assert!(stderr.contains("TENANT/PLUGIN"), "{stderr}");
    drop(server);
}
