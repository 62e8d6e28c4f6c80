//! One well-behaved tenant beside a hostile one that tries everything at
//! once, through `plugbus serve` (durable log, HTTP on): emit floods of
//! large events, self-amplifying emits, guests blocked in host calls, huge
//! error strings, log forgery, a memory hog, a symlink into the other
//! tenant, manifests past the operator's ceilings and size, a plugin past
//! its quota, slow HTTP clients and an ingest flood past its rate limit.
//! The good tenant's events are all handled, each hostile behaviour shows
//! up as its refusal, failure kind and counter, the host's memory and the
//! log stay bounded, and SIGTERM ends the process while a guest is blocked.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use plugbus_artifacts as artifacts;
use support::{Server, value_of};

const GOOD: &str = "good-pos";
const EVIL: &str = "evil-corp";
const GOOD_TOKEN: &str = "good-token";
const EVIL_TOKEN: &str = "evil-token";
const ADMIN_TOKEN: &str = "admin-token";
/// The chain budget the test host runs with.
const CHAIN_BUDGET: usize = 300;
/// The good tenant's events.
const GOOD_EVENTS: usize = 200;

/// Writes a plugin: its component and its manifest.
fn plugin(dir: &std::path::Path, name: &str, wasm: &str, manifest: &str) {
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy the component");
    std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write the manifest");
}

/// The plugins directory: the good tenant's audit log, and the hostile
/// tenant's plugins, valid and not.
fn plugins() -> tempfile::TempDir {
    let plugins = tempfile::tempdir().expect("plugins directory");
    let good = plugins.path().join(GOOD);
    let evil = plugins.path().join(EVIL);
    std::fs::create_dir_all(&good).expect("good tenant");
    std::fs::create_dir_all(&evil).expect("evil tenant");
    plugin(
        &good,
        "audit",
        artifacts::AUDIT_LOG,
        "subscribe = [\"order.*\"]\n[config]\napi_key = \"good-pos-secret\"\n",
    );
    let hostile = |name: &str, ty: &str, extra: &str| {
        plugin(
            &evil,
            name,
            artifacts::FIXTURE_HOSTILE,
            &format!("subscribe = [\"{ty}\"]\n{extra}[config]\nmode = \"{name}\"\n"),
        );
    };
    hostile("big-emit", "evil.big", "");
    hostile("amplify", "evil.amp", "");
    hostile("big-error", "evil.err", "[retry]\nmax_attempts = 1\n");
    hostile("forge-log", "evil.log", "");
    plugin(
        &evil,
        "sleep",
        artifacts::FIXTURE_SLEEPER,
        "subscribe = [\"evil.sleep\"]\n[limits]\ntimeout_ms = 100\n[retry]\nmax_attempts = 1\n[config]\nmode = \"sleep\"\n",
    );
    // Blocked for as long as the operator's ceiling allows: the one
    // SIGTERM must not wait for.
    plugin(
        &evil,
        "nap",
        artifacts::FIXTURE_SLEEPER,
        "subscribe = [\"evil.nap\"]\n[limits]\ntimeout_ms = 30000\n[retry]\nmax_attempts = 1\n[config]\nmode = \"sleep\"\n",
    );
    plugin(
        &evil,
        "hog",
        artifacts::FIXTURE_GROW_MEMORY,
        "subscribe = [\"evil.hog\"]\n[limits]\nmemory_mib = 16\n[retry]\nmax_attempts = 1\n",
    );
    // A manifest that is the good tenant's, through a symbolic link.
    std::fs::copy(artifacts::FIXTURE_HOSTILE, evil.join("spy.wasm")).expect("copy");
    std::os::unix::fs::symlink(
        std::path::Path::new("..").join(GOOD).join("audit.toml"),
        evil.join("spy.toml"),
    )
    .expect("symlink");
    // Limits past the operator's ceilings.
    plugin(
        &evil,
        "greedy",
        artifacts::FIXTURE_HOSTILE,
        "[limits]\nfuel = 18446744073709551615\nmemory_mib = 4096\ntimeout_ms = 3600000\n",
    );
    // A manifest one byte over the limit.
    plugin(
        &evil,
        "fat",
        artifacts::FIXTURE_HOSTILE,
        &"#".repeat(64 * 1024 + 1),
    );
    // One plugin more than the tenant's quota of 10 (every plugin file
    // takes a place, in name order, whether it then loads or not).
    plugin(
        &evil,
        "zz-extra",
        artifacts::FIXTURE_HOSTILE,
        "subscribe = [\"evil.extra\"]\n",
    );
    plugins
}

fn config(data: &std::path::Path, plugins: &std::path::Path) -> std::path::PathBuf {
    let hash = plugbus::config::hash_token;
    let path = data.join("plugbus.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             plugins_dir = \"{}\"\n\
             data_dir = \"{}\"\n\
             drain_seconds = 3\n\
             [budgets]\nmax_events_per_chain = {CHAIN_BUDGET}\n\
             [http]\nheader_timeout_ms = 500\nbody_timeout_ms = 1000\n\
             [admin]\ntoken_sha256 = \"{}\"\n\
             [tenants.{GOOD}]\ntoken_sha256 = \"{}\"\n\
             [tenants.{EVIL}]\ntoken_sha256 = \"{}\"\nmax_plugins = 10\ningest_events_per_second = 30\n",
            plugins.display(),
            data.join("data").display(),
            hash(ADMIN_TOKEN),
            hash(GOOD_TOKEN),
            hash(EVIL_TOKEN),
        ),
    )
    .expect("write the configuration");
    path
}

/// A raw HTTP/1.1 request with `Connection: close`: the status and the
/// whole answer.
fn raw_post(addr: &str, token: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn event(id: &str, ty: &str, subject: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"{ty}","subject":"{subject}","datacontenttype":"application/json","data":{{"n":1}}}}"#
    )
}

fn batch(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}

fn metrics(server: &Server) -> String {
    let (status, body) = server.curl("/metrics", &[]);
    assert_eq!(status, 200, "{body}");
    body.as_str().unwrap_or_default().to_owned()
}

/// The host's peak resident memory, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse().ok())
        .expect("a number");
    kib * 1024
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_hostile_tenant_trying_everything_at_once_does_not_reach_a_good_one() {
    let plugins = plugins();
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(&config(data.path(), plugins.path()));
    let addr = server.addr();

    // The loader refused what it must, each for its reason, and loaded the
    // rest.
    let log = server.log();
    for (plugin, reason) in [
        ("spy", "leaves the tenant folder"),
        ("greedy", "ceiling"),
        ("fat", "65537"),
        ("zz-extra", "quota"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{EVIL}/{plugin}")) && l.contains(reason)),
            "no refusal of {plugin} naming {reason:?} in:\n{log}"
        );
    }
    assert!(
        !log.contains("good-pos-secret"),
        "the good tenant's config reached a log line"
    );

    // Slow clients: half a request header each, then nothing.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).expect("connect");
            stream
                .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
                .expect("half a header");
            stream
        })
        .collect();

    // The hostile tenant's events, one of each kind, then an ingest flood
    // past its rate.
    let mut hostile: Vec<String> = (0..16)
        .map(|i| event(&format!("big-{i}"), "evil.big", "big"))
        .collect();
    for (id, ty) in [
        ("amp-0", "evil.amp"),
        ("err-0", "evil.err"),
        ("log-0", "evil.log"),
        ("sleep-0", "evil.sleep"),
        ("hog-0", "evil.hog"),
    ] {
        hostile.push(event(id, ty, id));
    }
    let (status, answer) = raw_post(
        &addr,
        EVIL_TOKEN,
        "application/cloudevents-batch+json",
        &batch(&hostile),
    );
    assert_eq!(status, 202, "{answer}");
    let mut limited = 0;
    for i in 0..60 {
        let (status, answer) = raw_post(
            &addr,
            EVIL_TOKEN,
            "application/cloudevents+json",
            &event(&format!("flood-{i}"), "evil.flood", "flood"),
        );
        match status {
            202 => {}
            429 => {
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after:"),
                    "{answer}"
                );
                limited += 1;
            }
            other => panic!("the flood got {other}: {answer}"),
        }
    }
    assert!(limited > 0, "no flood request was refused with 429");

    // The good tenant's events, in batches, while all of that goes on.
    let good: Vec<String> = (0..GOOD_EVENTS)
        .map(|i| {
            event(
                &format!("good-{i}"),
                "order.placed",
                &format!("order-{}", i % 10),
            )
        })
        .collect();
    for chunk in good.chunks(50) {
        let (status, answer) = raw_post(
            &addr,
            GOOD_TOKEN,
            "application/cloudevents-batch+json",
            &batch(chunk),
        );
        assert_eq!(status, 202, "{answer}");
    }

    // Every good event is handled, once, by the good plugin.
    let lines = server.deliveries_until(Duration::from_secs(180), |seen| {
        seen.iter()
            .filter(|d| d["tenant"] == GOOD && d["outcome"] == "handled")
            .count()
            >= GOOD_EVENTS
    });
    let good_lines: Vec<_> = lines.iter().filter(|d| d["tenant"] == GOOD).collect();
    assert!(
        good_lines.iter().all(|d| d["outcome"] == "handled"),
        "a good delivery failed: {good_lines:#?}"
    );
    let ids: std::collections::BTreeSet<_> = good_lines
        .iter()
        .filter_map(|d| d["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), GOOD_EVENTS);

    // The hostile deliveries come to an end: the amplifier's chain stops at
    // its budget, through the log.
    let mut evil_lines: Vec<serde_json::Value> = lines
        .iter()
        .filter(|d| d["tenant"] == EVIL)
        .cloned()
        .collect();
    let quiet = Duration::from_secs(5);
    let give_up = Instant::now() + Duration::from_secs(120);
    while let Ok(line) = server.stdout.recv_timeout(quiet) {
        if line["tenant"] == EVIL {
            evil_lines.push(line);
        }
        assert!(
            Instant::now() < give_up,
            "the hostile tenant's deliveries did not stop: {} so far",
            evil_lines.len()
        );
    }
    let of = |plugin: &str| -> Vec<&serde_json::Value> {
        evil_lines
            .iter()
            .filter(|d| d["plugin"] == plugin)
            .collect()
    };
    let amplified = of("amplify").len();
    assert!(
        (2..=CHAIN_BUDGET + 1).contains(&amplified),
        "the amplifier made {amplified} deliveries; its chain budget is {CHAIN_BUDGET}"
    );
    // A guest blocked in a host call timed out.
    let sleep = of("sleep");
    assert!(
        sleep
            .iter()
            .any(|d| d["outcome"] == "failed" && d["error_kind"] == "timeout"),
        "{sleep:#?}"
    );
    // A 10 MiB error message is cut to the limit.
    let err = of("big-error");
    let message = err
        .first()
        .and_then(|d| d["error_message"].as_str())
        .unwrap_or_else(|| panic!("{err:#?}"));
    assert!(message.len() <= 4096 + 64, "{} bytes", message.len());
    // The hog met its memory limit.
    assert!(
        of("hog").iter().any(|d| d["outcome"] == "failed"),
        "{:#?}",
        of("hog")
    );

    // The slow clients were cut off by the header timeout.
    for stream in &mut slow {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a slow client's connection is still open: {e}"),
        }
    }

    // A forged line never reaches the host's log as a line of its own, and
    // no escape sequence reaches it at all.
    let log = server.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2020-01-01T00:00:00.000000Z")),
        "a plugin forged a host log line:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence reached the log"
    );

    // Each hostile behaviour is counted.
    let text = metrics(&server);
    let failed = |kind: &str| {
        value_of(
            &text,
            "plugbus_deliveries_total",
            &[("tenant", EVIL), ("outcome", "failed"), ("kind", kind)],
        )
    };
    assert!(failed("timeout") >= 1.0, "{text}");
    assert!(
        value_of(&text, "plugbus_emits_refused_total", &[("tenant", EVIL)]) >= 1.0,
        "{text}"
    );
    assert!(
        value_of(&text, "plugbus_plugins_refused_total", &[("tenant", EVIL)]) >= 4.0,
        "{text}"
    );
    assert!(
        value_of(
            &text,
            "plugbus_http_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 50.0,
        "{text}"
    );
    assert!(
        value_of(
            &text,
            "plugbus_rejected_requests_total",
            &[("tenant", EVIL), ("status", "429")]
        ) >= 1.0,
        "{text}"
    );

    // Memory and the log stayed bounded: 16 events asking to emit 100 MiB
    // each took 3.2 GB of memory before the budgets.
    let peak = peak_rss_bytes(server.child.id());
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
    let log_bytes = dir_bytes(&data.path().join("data"));
    assert!(
        log_bytes < 256 << 20,
        "the log grew to {} MiB",
        log_bytes >> 20
    );

    // SIGTERM while a guest is blocked for 30 s: the process exits 0
    // within its drain time, not the guest's.
    let (status, answer) = raw_post(
        &addr,
        EVIL_TOKEN,
        "application/cloudevents+json",
        &event("nap-0", "evil.nap", "nap"),
    );
    assert!(status == 202 || status == 429, "{status}: {answer}");
    if status == 429 {
        std::thread::sleep(Duration::from_secs(2));
        let (status, answer) = raw_post(
            &addr,
            EVIL_TOKEN,
            "application/cloudevents+json",
            &event("nap-0", "evil.nap", "nap"),
        );
        assert_eq!(status, 202, "{answer}");
    }
    // Give the consumer time to start the delivery.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let mut server = server;
    server.sigterm();
    let exited = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "still running {:?} after SIGTERM with a drain time of 3 s:\n{}",
            started.elapsed(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exited.success(), "{exited}:\n{}", server.log());
}
