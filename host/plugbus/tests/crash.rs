//! Crash safety of `plugbus serve`: killed with SIGKILL at arbitrary
//! moments while events stream in, restarted each time, it loses no event
//! it stored, every plugin ends past every stored event, the effects of a
//! handler (its emitted events and its state writes, committed with its
//! cursor) happen exactly once per stored event, and it never delivers an
//! event it had not stored.
//!
//! The lines `serve` writes to stdout are not the record: a kill can come
//! between a delivery and its line. The log is.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher as _;
use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use plugbus::log::{CursorStore, EventStore, SqliteLog, SqliteLogConfig};
use plugbus_artifacts as artifacts;

const TENANT: &str = "acme-pos";
const PLUGINS: [&str; 3] = ["audit", "emitter", "counter"];
/// The subjects the events are spread over; `counter` counts each in state.
const SUBJECTS: u64 = 7;

/// An event the `emitter` plugin answers with one `mix.emitted` event, and
/// the `counter` plugin counts under its subject.
fn event(n: u64) -> String {
    let subject = n % SUBJECTS;
    format!(
        r#"{{"specversion":"1.0","id":"e-{n}","source":"/pos/1","type":"mix.emit","subject":"s-{subject}","tenant":"{TENANT}","data":{{"n":{n}}}}}"#
    )
}

/// A pseudo-random number below `bound`, different on every call.
fn random(bound: u64) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u8) % bound.max(1)
}

/// Runs `plugbus serve --stdin`, feeding it events from `first` on until
/// it is killed after `kill_after` (or, with `None`, until the input ends).
/// Returns the (plugin, event id, handled) of every delivery it wrote.
fn run(
    plugins: &std::path::Path,
    data: &std::path::Path,
    first: u64,
    count: u64,
    kill_after: Option<Duration>,
) -> Vec<(String, String, bool)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .arg("serve")
        // No HTTP: tests run side by side.
        .args(["--listen", "off"])
        .arg("--plugins")
        .arg(plugins)
        .arg("--data")
        .arg(data)
        .arg("--stdin")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run plugbus serve");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        for n in first..first + count {
            // The pipe breaks when the host is killed.
            if writeln!(stdin, "{}", event(n)).is_err() {
                return;
            }
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (started, delivering) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .inspect(|_| {
                let _ = started.send(());
            })
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (
                    field("plugin"),
                    field("event_id"),
                    v["outcome"] == "handled",
                )
            })
            .collect::<Vec<_>>()
    });
    match kill_after {
        Some(after) => {
            // Counted from its first delivery, not from its start: on a
            // loaded machine the start (compiling the plugins) alone can
            // take longer than any `after`.
            let _ = delivering.recv_timeout(Duration::from_secs(120));
            std::thread::sleep(after);
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        None => {
            let status = child.wait().expect("plugbus exits");
            assert!(status.success(), "{status}");
        }
    }
    writer.join().expect("writer");
    reader.join().expect("reader")
}

#[test]
fn sigkill_at_random_moments_loses_no_stored_event() {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let data = tempfile::tempdir().expect("data directory");
    let tenant = plugins.path().join(TENANT);
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(artifacts::AUDIT_LOG, tenant.join("audit.wasm")).expect("copy");
    std::fs::copy(artifacts::FIXTURE_MIXED, tenant.join("emitter.wasm")).expect("copy");
    std::fs::write(tenant.join("emitter.toml"), "subscribe = [\"mix.emit\"]\n").expect("manifest");
    std::fs::copy(artifacts::FIXTURE_COUNTER, tenant.join("counter.wasm")).expect("copy");
    std::fs::write(tenant.join("counter.toml"), "subscribe = [\"mix.emit\"]\n").expect("manifest");

    let mut deliveries = Vec::new();
    let mut next = 0;
    for _ in 0..4 {
        // After its first delivery, long enough to deliver some, short
        // enough to be killed in the middle of the stream.
        let after = Duration::from_millis(random(500));
        deliveries.extend(run(plugins.path(), data.path(), next, 20_000, Some(after)));
        next += 20_000;
    }
    // A last, clean run with no input delivers what is left, and exits.
    deliveries.extend(run(plugins.path(), data.path(), next, 0, None));

    let log = SqliteLog::open(data.path(), SqliteLogConfig::default()).expect("the log");
    let all = log.read(TENANT, 0, usize::MAX).expect("read the log");
    let stored: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.event.ty() == "mix.emit")
        .map(|s| s.event.id())
        .collect();
    let mut effects: BTreeMap<&str, usize> = BTreeMap::new();
    let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
    for s in all.iter().filter(|s| s.event.ty() == "counter.counted") {
        let cause = s.event.causation_id().expect("a cause");
        *counted.entry(cause).or_default() += 1;
    }
    for s in all.iter().filter(|s| s.event.ty() == "mix.emitted") {
        let cause = s
            .event
            .causation_id()
            .expect("an emitted event names its cause");
        assert!(
            stored.contains(cause),
            "{cause} caused an event but was never stored"
        );
        *effects.entry(cause).or_default() += 1;
    }
    eprintln!(
        "{next} events sent, {} stored, {} emitted, {} deliveries written",
        stored.len(),
        effects.values().sum::<usize>(),
        deliveries.len()
    );
    assert!(
        stored.len() > 100,
        "the runs stored {} events; the test needs some to be meaningful",
        stored.len()
    );
    for id in &stored {
        assert_eq!(
            effects.get(id).copied().unwrap_or(0),
            1,
            "the handler's effect for {id} happened once"
        );
        assert_eq!(
            counted.get(id).copied().unwrap_or(0),
            1,
            "the counter's emit for {id} happened once"
        );
    }
    // The counter's state counts each stored event of a subject once: its
    // writes were committed with its cursor, never twice, never lost.
    for subject in 0..SUBJECTS {
        let subject = format!("s-{subject}");
        let expected = all
            .iter()
            .filter(|s| s.event.ty() == "mix.emit" && s.event.subject() == Some(&subject))
            .count();
        let count: usize =
            plugbus::state::StateStore::get(&log, TENANT, "counter", &format!("count/{subject}"))
                .expect("read the state")
                .map_or(0, |v| serde_json::from_slice(&v).expect("a JSON count"));
        assert_eq!(count, expected, "the count of {subject}");
    }
    let ids: BTreeSet<&str> = all.iter().map(|s| s.event.id()).collect();
    for (plugin, id, ok) in &deliveries {
        assert!(
            ids.contains(id.as_str()),
            "{id} was delivered but never stored"
        );
        assert!(*ok, "{plugin} failed on {id}");
    }
    let head = log.head().expect("head");
    for plugin in PLUGINS {
        assert_eq!(
            log.cursor(TENANT, plugin).expect("cursor"),
            Some(head),
            "{plugin} is at the end of the log"
        );
    }
}
