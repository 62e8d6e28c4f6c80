//! Three `plugbus serve` hosts sharing one nats-server (issue 15's
//! multi-host test): tens of thousands of events published over HTTP,
//! spread over the three; one host killed with SIGKILL mid-stream and
//! started again; then the nats-server killed and started again. Then:
//! every acknowledged event was handled by every plugin subscribed to it,
//! exactly once in its effects (the stateful plugins' counts are exact),
//! the events of each key reached every plugin in publish order, nothing
//! was dead-lettered, and each host did a share of the work.
//!
//! Each tenant has three plugins, all subscribed to every event:
//! - `counter` (the `counter` fixture) counts the events of each key in
//!   its state and emits `counter.counted` for each, naming the event as
//!   its cause: its order shows in the order of those emits in the log;
//! - `sequence` (the `sequence` fixture) checks from inside that the
//!   events of each key come numbered 1, 2, 3, … and records in its state
//!   any that do not (a lost, repeated or reordered event), and emits
//!   `sequence.seen` for each;
//! - `quiet` (the `sequence` fixture told not to emit): the same check,
//!   with commits that carry state and no emits.
//!
//! A publisher owns its tenants' keys, and sends event n + 1 of a key only
//! after event n was acknowledged (202), so the publish order of a key is
//! defined; a batch holds at most one event of a key (a request answered
//! 503 may have been stored in part, in any order). A request that fails
//! (503, a refused connection) is sent again, the same events with the
//! same ids, to the next host: the stream's duplicate window makes that
//! safe.
//!
//! The randomness (which host dies, when, for how long, the batches) comes
//! from a seed printed at the start; `PLUGBUS_TEST_SEED=<seed>` replays
//! it (the processes' timing is not replayed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugbus::log::EventStore as _;
use plugbus_artifacts as artifacts;
use plugbus_nats_server::{NatsServer, free_port};

mod support;

/// Each tenant's events in four partitions: one plugin of one tenant runs
/// on several hosts at once. The plugins keep state per key (the subject),
/// so no state key is shared between partitions.
const PARTITIONS: u32 = 4;

const HOSTS: usize = 3;
const TENANTS: usize = 10;
/// Keys per tenant.
const KEYS: usize = 32;
/// Events per key: 10 × 32 × 90 = 28,800 events.
const PER_KEY: u64 = 90;
/// Publisher threads; each owns `TENANTS / PUBLISHERS` tenants.
const PUBLISHERS: usize = 5;
const PLUGINS: [&str; 3] = ["counter", "sequence", "quiet"];
const ADMIN_TOKEN: &str = "multihost-admin-token";
/// The lease ttl: a dead host's plugins move within about 3.2 s.
const LEASE_TTL_MS: u64 = 2_000;
/// How long any one wait of the test may last before it fails: generous,
/// the machine is shared.
const PATIENCE: Duration = Duration::from_secs(300);

fn tenant(t: usize) -> String {
    format!("tenant-{t}")
}

fn token(t: usize) -> String {
    format!("multihost-token-{t}")
}

fn key(k: usize) -> String {
    format!("k{k:02}")
}

fn event_id(t: usize, k: usize, n: u64) -> String {
    format!("{}-{}-{n}", tenant(t), key(k))
}

/// splitmix64: a small generator, the same in every build, from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }
}

fn seed() -> u64 {
    match std::env::var("PLUGBUS_TEST_SEED") {
        Ok(seed) => seed.parse().expect("PLUGBUS_TEST_SEED is a number"),
        Err(_) => {
            use std::hash::BuildHasher as _;
            std::collections::hash_map::RandomState::new().hash_one(Instant::now())
        }
    }
}

/// One `plugbus serve` process on a fixed port, which it keeps across a
/// restart; its stdout (a line per delivery) is dropped, its log kept
/// (both lives of a restarted host).
struct Host {
    port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (without waiting until it is ready).
    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plugbus"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plugbus serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                log.push(line);
            }
        });
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200; fails at once if the process
    /// exits.
    fn wait_ready(&mut self, agent: &ureq::Agent) {
        let url = self.url();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("started");
        wait_for(&format!("{url} to be ready"), || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = log.lock().unwrap_or_else(PoisonError::into_inner);
                panic!("the host on {url} exited ({status}):\n{}", log.join("\n"));
            }
            get(agent, &format!("{url}/readyz"), ADMIN_TOKEN).is_some_and(|(s, _)| s == 200)
        });
    }

    /// SIGKILL, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its log lines about one of `plugins` ((tenant, plugin)), and its
    /// warnings and errors, at most the last `most` of each.
    fn log_about(&self, plugins: &BTreeSet<(String, String)>, most: usize) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let about: Vec<&str> = log
            .iter()
            .filter(|line| {
                line.starts_with("===")
                    || plugins
                        .iter()
                        .any(|(t, p)| line.contains(&format!("tenant={t} plugin={p}")))
            })
            .map(String::as_str)
            .collect();
        let alarms: Vec<&str> = log
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(String::as_str)
            .collect();
        let last = |lines: &[&str]| lines[lines.len().saturating_sub(most)..].join("\n");
        format!(
            "{} lines about them, the last {most}:\n{}\n{} warnings and errors, the last {most}:\n{}",
            about.len(),
            last(&about),
            alarms.len(),
            last(&alarms)
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GET `url` with `token`: the status and body, or `None` when the host
/// cannot be reached.
fn get(agent: &ureq::Agent, url: &str, token: &str) -> Option<(u16, String)> {
    let mut response = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// GET `path` from the first host of `urls` that answers 200; its body as
/// JSON, or the last answer when none did.
fn try_get_json(
    agent: &ureq::Agent,
    urls: &[String],
    path: &str,
) -> Result<serde_json::Value, Option<(u16, String)>> {
    let mut last = None;
    for url in urls {
        match get(agent, &format!("{url}{path}"), ADMIN_TOKEN) {
            Some((200, body)) => return Ok(serde_json::from_str(&body).expect("a JSON answer")),
            other => last = other,
        }
    }
    Err(last)
}

/// GET `path` from the first host of `urls` that answers 200; its body as
/// JSON.
fn get_json(agent: &ureq::Agent, urls: &[String], path: &str) -> serde_json::Value {
    try_get_json(agent, urls, path)
        .unwrap_or_else(|last| panic!("no host answered {path}: the last answer {last:?}"))
}

/// Waits until `done` holds, asking every 50 ms, within [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The handled deliveries a host has counted since it started.
fn handled(agent: &ureq::Agent, url: &str) -> u64 {
    let (status, text) = get(agent, &format!("{url}/metrics"), ADMIN_TOKEN).expect("/metrics");
    assert_eq!(status, 200, "{text}");
    support::value_of(&text, "plugbus_deliveries_total", &[("outcome", "handled")]) as u64
}

fn leases_held(agent: &ureq::Agent, url: &str) -> u64 {
    get(agent, &format!("{url}/metrics"), ADMIN_TOKEN)
        .filter(|(status, _)| *status == 200)
        .map_or(0, |(_, text)| {
            support::value_of(&text, "plugbus_leases_held", &[]) as u64
        })
}

/// What the publishers share with the test's thread.
struct Shared {
    urls: Vec<String>,
    /// Events acknowledged so far.
    acked: AtomicU64,
    /// Publishers start no batch while `acked` is at or past it: the faults
    /// come while the stream goes on, not after it.
    gate: AtomicU64,
    /// Requests not acknowledged (503, 429, a refused or broken
    /// connection), sent again.
    refused: AtomicU64,
    /// Requests acknowledged, by host.
    accepted_by: [AtomicU64; HOSTS],
}

/// Publishes every event of `tenants` (each key's events in order, a
/// batch at a time with at most one event per key) round-robin over the
/// hosts, sending a request that was not acknowledged again (same ids) to
/// the next host. Returns the events acknowledged, by (tenant, key): the
/// numbers 1..=n acknowledged in that order.
fn publish(shared: &Shared, tenants: &[usize], mut rng: Rng) -> BTreeMap<(usize, usize), u64> {
    let agent = agent(Duration::from_secs(15));
    let mut next: BTreeMap<(usize, usize), u64> = tenants
        .iter()
        .flat_map(|&t| (0..KEYS).map(move |k| ((t, k), 1)))
        .collect();
    let mut acked: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut host = rng.range(0, HOSTS as u64) as usize;
    loop {
        let open: Vec<usize> = tenants
            .iter()
            .copied()
            .filter(|&t| (0..KEYS).any(|k| next[&(t, k)] <= PER_KEY))
            .collect();
        let Some(&t) = open.get(rng.range(0, open.len() as u64) as usize) else {
            return acked;
        };
        // A random subset of the tenant's unfinished keys, in a random order.
        let mut keys: Vec<usize> = (0..KEYS).filter(|&k| next[&(t, k)] <= PER_KEY).collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.range(0, i as u64 + 1) as usize);
        }
        keys.truncate(rng.range(1, keys.len() as u64 + 1) as usize);
        let batch: Vec<(usize, u64)> = keys.iter().map(|&k| (k, next[&(t, k)])).collect();
        let body = serde_json::Value::Array(
            batch
                .iter()
                .map(|&(k, n)| {
                    serde_json::json!({
                        "specversion": "1.0",
                        "id": event_id(t, k, n),
                        "source": "/multihost",
                        "type": "seq.next",
                        "subject": key(k),
                        "datacontenttype": "application/json",
                        "data": n,
                    })
                })
                .collect(),
        )
        .to_string();
        while shared.acked.load(Ordering::SeqCst) >= shared.gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = Instant::now() + PATIENCE;
        let accepted = loop {
            host = (host + 1) % HOSTS;
            let answer = agent
                .post(&format!("{}/v1/events", shared.urls[host]))
                .header("Authorization", &format!("Bearer {}", token(t)))
                .header("Content-Type", "application/cloudevents-batch+json")
                .send(&body)
                .ok()
                .and_then(|mut r| {
                    let status = r.status().as_u16();
                    r.body_mut().read_to_string().ok().map(|b| (status, b))
                });
            match answer {
                Some((202, text)) => {
                    shared.accepted_by[host].fetch_add(1, Ordering::SeqCst);
                    break text;
                }
                Some((status, text)) if ![503, 429, 408].contains(&status) => {
                    panic!("{} answered {status}: {text}", shared.urls[host])
                }
                refused => {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    assert!(
                        Instant::now() < deadline,
                        "no host acknowledged a batch of {} within {PATIENCE:?}; the last answer {refused:?}",
                        tenant(t)
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let accepted: serde_json::Value = serde_json::from_str(&accepted).expect("a JSON answer");
        let ids: Vec<&str> = accepted["accepted"]
            .as_array()
            .expect("accepted events")
            .iter()
            .map(|a| a["id"].as_str().expect("an id"))
            .collect();
        let sent: Vec<String> = batch.iter().map(|&(k, n)| event_id(t, k, n)).collect();
        assert_eq!(ids, sent, "the answer names the events sent, in order");
        for &(k, n) in &batch {
            acked.insert((t, k), n);
            next.insert((t, k), n + 1);
        }
        shared.acked.fetch_add(batch.len() as u64, Ordering::SeqCst);
    }
}

/// Writes the plugins (the same files for every host), a data directory
/// per host, and each host's configuration; returns the hosts, not yet
/// started.
fn setup(dir: &Path, nats_url: &str) -> Vec<Host> {
    for t in 0..TENANTS {
        let plugins = dir.join("plugins").join(tenant(t));
        std::fs::create_dir_all(&plugins).expect("plugins directory");
        let subscribe = "subscribe = [\"seq.*\"]\n";
        for (name, wasm, manifest) in [
            ("counter", artifacts::FIXTURE_COUNTER, subscribe.to_owned()),
            (
                "sequence",
                artifacts::FIXTURE_SEQUENCE,
                subscribe.to_owned(),
            ),
            (
                "quiet",
                artifacts::FIXTURE_SEQUENCE,
                format!("{subscribe}[config]\nemit = \"false\"\n"),
            ),
        ] {
            std::fs::copy(wasm, plugins.join(format!("{name}.wasm"))).expect("copy");
            std::fs::write(plugins.join(format!("{name}.toml")), manifest).expect("manifest");
        }
    }
    let tenants: String = (0..TENANTS)
        .map(|t| {
            format!(
                "[tenants.{}]\ntoken_sha256 = \"{}\"\n",
                tenant(t),
                plugbus::config::hash_token(&token(t))
            )
        })
        .collect();
    (0..HOSTS)
        .map(|h| {
            let port = free_port();
            let config = dir.join(format!("host-{h}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\n\
                     plugins_dir = \"{}\"\n\
                     data_dir = \"{}\"\n\
                     [admin]\ntoken_sha256 = \"{}\"\n\
                     {tenants}\
                     [log]\nbackend = \"nats\"\n\
                     [log.nats]\nservers = [\"{nats_url}\"]\n\
                     connect_timeout_ms = 10000\nrequest_timeout_ms = 2000\n\
                     lease_ttl_ms = {LEASE_TTL_MS}\n\
                     partitions = {PARTITIONS}\n",
                    dir.join("plugins").display(),
                    dir.join(format!("data-{h}")).display(),
                    plugbus::config::hash_token(ADMIN_TOKEN),
                ),
            )
            .expect("write the configuration");
            Host {
                port,
                config,
                child: None,
                log: Arc::default(),
            }
        })
        .collect()
}

/// Every event of `tenant` in the log, in order.
fn read_all(log: &plugbus::log_nats::NatsLog, tenant: &str) -> Vec<plugbus::log::StoredEvent> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |s: &plugbus::log::StoredEvent| s.seq);
        let page = log.read(tenant, after, 10_000).expect("read the log");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// A plugin's whole state, from a host's API: key → JSON value.
fn state_of(
    agent: &ureq::Agent,
    urls: &[String],
    tenant: &str,
    plugin: &str,
) -> BTreeMap<String, serde_json::Value> {
    let mut state = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = get_json(
            agent,
            urls,
            &format!("/v1/tenants/{tenant}/plugins/{plugin}/state?limit=1000{after}"),
        );
        for entry in page["entries"].as_array().expect("entries") {
            assert_eq!(entry["encoding"], "json", "{entry}");
            state.insert(
                entry["key"].as_str().expect("a key").to_owned(),
                entry["value"].clone(),
            );
        }
        match page["next_after"].as_str() {
            // The keys are the test's own: nothing to escape in a query.
            Some(next) => after = format!("&after={next}"),
            None => return state,
        }
    }
}

#[test]
fn three_hosts_share_the_work_through_a_host_crash_and_a_nats_restart() {
    let seed = seed();
    eprintln!("multihost: seed {seed} (PLUGBUS_TEST_SEED={seed} replays its choices)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut hosts = setup(dir.path(), &nats.url());
    let urls: Vec<String> = hosts.iter().map(Host::url).collect();
    let admin = agent(Duration::from_secs(30));

    // One host creates the stream and buckets; the other two join it.
    hosts[0].spawn();
    hosts[0].wait_ready(&admin);
    hosts[1].spawn();
    hosts[2].spawn();
    for host in &mut hosts {
        host.wait_ready(&admin);
    }
    // The plugins spread: each host delivers for some (30 plugins, so the
    // chance that rendezvous hashing gives one host none is 3 × (2/3)^30).
    wait_for("every host to hold some leases", || {
        urls.iter().all(|url| leases_held(&admin, url) > 0)
    });
    let setup_time = started.elapsed();

    let total = TENANTS as u64 * KEYS as u64 * PER_KEY;
    let victim = rng.range(0, HOSTS as u64) as usize;
    let kill_at = total * rng.range(25, 40) / 100;
    let nats_kill_at = total * rng.range(55, 70) / 100;
    let victim_down = Duration::from_millis(rng.range(500, 2_500));
    let nats_down_extra = Duration::from_millis(rng.range(0, 1_500));
    // A publisher runs at most this far past a fault before it happens.
    let slack = 2_000;
    eprintln!(
        "multihost: {total} events of {TENANTS} tenants × {KEYS} keys, {PUBLISHERS} publishers, {} plugins per tenant; \
         host {victim} killed after {kill_at} acknowledged, down {victim_down:?}; nats-server killed after {nats_kill_at}",
        PLUGINS.len()
    );
    let shared = Arc::new(Shared {
        urls: urls.clone(),
        acked: AtomicU64::new(0),
        gate: AtomicU64::new(kill_at + slack),
        refused: AtomicU64::new(0),
        accepted_by: Default::default(),
    });
    let publishing = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let shared = shared.clone();
            let tenants: Vec<usize> = (p..TENANTS).step_by(PUBLISHERS).collect();
            let rng = Rng(rng.next());
            std::thread::spawn(move || publish(&shared, &tenants, rng))
        })
        .collect();

    // Fault 1: SIGKILL one host mid-stream, and start it again on the same
    // port with the same configuration.
    wait_for("the first third of the events", || {
        shared.acked.load(Ordering::SeqCst) >= kill_at
    });
    let victim_before = handled(&admin, &urls[victim]);
    hosts[victim].kill();
    let killed_at = shared.acked.load(Ordering::SeqCst);
    shared.gate.store(nats_kill_at + slack, Ordering::SeqCst);
    std::thread::sleep(victim_down);
    hosts[victim]
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push("=== killed with SIGKILL and started again ===".to_owned());
    hosts[victim].spawn();
    hosts[victim].wait_ready(&admin);
    let restarted_at = shared.acked.load(Ordering::SeqCst);

    // Fault 2: SIGKILL the nats-server mid-stream; the publishers meet
    // refusals and send again; then it comes back on the same port and
    // store.
    wait_for("two thirds of the events", || {
        shared.acked.load(Ordering::SeqCst) >= nats_kill_at
    });
    let refused_before = shared.refused.load(Ordering::SeqCst);
    nats.kill();
    let nats_killed_at = shared.acked.load(Ordering::SeqCst);
    shared.gate.store(u64::MAX, Ordering::SeqCst);
    wait_for("a request refused while NATS is down", || {
        shared.refused.load(Ordering::SeqCst) > refused_before
    });
    std::thread::sleep(nats_down_extra);
    nats.restart();

    let mut acked: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for publisher in publishers {
        acked.extend(publisher.join().expect("a publisher"));
    }
    let publish_time = publishing.elapsed();
    let acked_total: u64 = acked.values().sum();
    eprintln!(
        "multihost: {acked_total} events acknowledged in {publish_time:?} (host {victim} killed at {killed_at}, back at {restarted_at}; \
         nats-server killed at {nats_killed_at}); requests acknowledged by host {:?}, {} refused and sent again",
        shared
            .accepted_by
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect::<Vec<_>>(),
        shared.refused.load(Ordering::SeqCst)
    );
    assert_eq!(
        acked_total, total,
        "every event was acknowledged in the end"
    );

    // Wait until every plugin is past every event of its tenant, seen the
    // same way twice in a row.
    let draining = Instant::now();
    let mut quiet_rounds = 0;
    wait_for("every plugin to finish its backlog", || {
        let done = try_get_json(&admin, &urls, "/v1/admin/plugins").is_ok_and(|plugins| {
            let views = plugins["plugins"].as_array().expect("plugins");
            views.len() == TENANTS * PLUGINS.len()
                && views
                    .iter()
                    .all(|v| v["lag"] == 0 && v["status"] == "active")
        });
        quiet_rounds = if done { quiet_rounds + 1 } else { 0 };
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        quiet_rounds >= 2
    });
    let drain_time = draining.elapsed();

    // The work: what each host handled (the victim's first life counted
    // before it was killed).
    let mut per_host: Vec<u64> = urls.iter().map(|url| handled(&admin, url)).collect();
    let victim_after = per_host[victim];
    per_host[victim] += victim_before;
    let leases: Vec<u64> = urls.iter().map(|url| leases_held(&admin, url)).collect();
    let handled_total: u64 = per_host.iter().sum();
    let expected_deliveries = total * PLUGINS.len() as u64;
    eprintln!(
        "multihost: drained in {drain_time:?}; handled deliveries by host {per_host:?} (host {victim}: {victim_before} before its kill, \
         {victim_after} after), {handled_total} in all for {expected_deliveries} (a delivery not committed when its host died or its \
         lease moved is made again); leases held at the end {leases:?}"
    );

    // Collect every violation, then fail once with all of them.
    let mut wrong: Vec<String> = Vec::new();
    let checking = Instant::now();

    // Each plugin's state: exact counts, no disorder.
    for t in 0..TENANTS {
        for plugin in PLUGINS {
            let state = state_of(&admin, &urls, &tenant(t), plugin);
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            for k in 0..KEYS {
                let n = acked[&(t, k)];
                if plugin == "counter" {
                    expected.insert(format!("count/{}", key(k)), n);
                } else {
                    expected.insert(format!("seen/{}", key(k)), n);
                    expected.insert(format!("last/{}", key(k)), n);
                }
            }
            for (name, value) in &state {
                match expected.get(name) {
                    Some(n) if value.as_u64() == Some(*n) => {}
                    Some(n) => wrong.push(format!(
                        "{}/{plugin}: state {name} is {value}, {n} events of the key were acknowledged",
                        tenant(t)
                    )),
                    None => wrong.push(format!("{}/{plugin}: state {name} = {value}", tenant(t))),
                }
            }
            for name in expected.keys().filter(|name| !state.contains_key(*name)) {
                wrong.push(format!("{}/{plugin}: no state {name}", tenant(t)));
            }
            let letters = get_json(
                &admin,
                &urls,
                &format!("/v1/tenants/{}/plugins/{plugin}/dead-letters", tenant(t)),
            );
            let letters = letters["dead_letters"].as_array().expect("dead letters");
            if !letters.is_empty() {
                wrong.push(format!(
                    "{}/{plugin}: {} dead letters, the first {}",
                    tenant(t),
                    letters.len(),
                    letters[0]
                ));
            }
        }
    }

    // The log: each acknowledged event stored once, each key's events in
    // publish order; each plugin's emits, one per event, in the key's
    // order.
    let log = plugbus::log_nats::NatsLog::open(plugbus::log_nats::NatsLogConfig {
        servers: vec![nats.url()],
        partitions: PARTITIONS,
        ..Default::default()
    })
    .expect("open the log");
    let mut stored_events = 0;
    for t in 0..TENANTS {
        let mut published: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut counted: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut seen: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for stored in read_all(&log, &tenant(t)) {
            stored_events += 1;
            let event = &stored.event;
            let subject = event.subject().unwrap_or_default().to_owned();
            let number = |data: &[u8]| -> u64 {
                std::str::from_utf8(data)
                    .ok()
                    .and_then(|d| d.trim().parse().ok())
                    .unwrap_or(0)
            };
            let cause = event.causation_id().unwrap_or_default().to_owned();
            match event.ty() {
                "seq.next" => published
                    .entry(subject)
                    .or_default()
                    .push(number(event.data())),
                "counter.counted" => counted
                    .entry(subject)
                    .or_default()
                    .push((cause, number(event.data()))),
                "sequence.seen" => seen
                    .entry(subject)
                    .or_default()
                    .push((cause, number(event.data()))),
                other => wrong.push(format!(
                    "{}: an event of type {other} at {}",
                    tenant(t),
                    stored.seq
                )),
            }
        }
        for k in 0..KEYS {
            let n = acked[&(t, k)];
            let want: Vec<u64> = (1..=n).collect();
            let want_caused: Vec<(String, u64)> = (1..=n).map(|i| (event_id(t, k, i), i)).collect();
            let name = key(k);
            let first_difference = |got: &[(String, u64)]| {
                got.iter()
                    .zip(&want_caused)
                    .position(|(a, b)| a != b)
                    .map(|i| format!("at {i}: {:?} for {:?}", got[i], want_caused[i]))
                    .unwrap_or_else(|| format!("{} of {n}", got.len()))
            };
            let stored = published.remove(&name).unwrap_or_default();
            if stored != want {
                wrong.push(format!(
                    "{}/{name}: the stored events are not 1..={n} in order: {} of them, the first out of place {:?}",
                    tenant(t),
                    stored.len(),
                    stored.iter().zip(&want).find(|(a, b)| a != b)
                ));
            }
            let got = counted.remove(&name).unwrap_or_default();
            if got != want_caused {
                wrong.push(format!(
                    "{}/counter/{name}: the counted emits are not one per event in order: {}",
                    tenant(t),
                    first_difference(&got)
                ));
            }
            let got = seen.remove(&name).unwrap_or_default();
            if got != want_caused {
                wrong.push(format!(
                    "{}/sequence/{name}: the seen emits are not one per event in order: {}",
                    tenant(t),
                    first_difference(&got)
                ));
            }
        }
        for (name, left) in [
            ("events", published.len()),
            ("counted", counted.len()),
            ("seen", seen.len()),
        ] {
            if left > 0 {
                wrong.push(format!("{}: {name} of {left} unknown keys", tenant(t)));
            }
        }
    }
    let check_time = checking.elapsed();
    eprintln!(
        "multihost: {stored_events} events in the log checked in {check_time:?}; setup {setup_time:?}, whole test {:?}",
        started.elapsed()
    );

    // The work was spread: every host handled a share (at least 1% of all
    // deliveries: a host that held no plugin would have none), and the
    // restarted host took plugins back after its restart.
    for (h, &n) in per_host.iter().enumerate() {
        if n < expected_deliveries / 100 {
            wrong.push(format!(
                "host {h} handled {n} of {handled_total} deliveries: the work was not spread"
            ));
        }
    }
    if victim_after == 0 {
        wrong.push(format!(
            "host {victim} handled nothing after its restart: it took no plugin back"
        ));
    }

    if !wrong.is_empty() {
        // The plugins that went wrong, and what each host said about them.
        let plugins: BTreeSet<(String, String)> = wrong
            .iter()
            .filter_map(|w| {
                let (t, rest) = w.split_once('/')?;
                let p = rest.split(['/', ':']).next()?;
                PLUGINS.contains(&p).then(|| (t.to_owned(), p.to_owned()))
            })
            .collect();
        eprintln!("multihost: the plugins that went wrong: {plugins:?}");
        for (h, host) in hosts.iter().enumerate() {
            eprintln!("--- host {h}: {}", host.log_about(&plugins, 60));
        }
        panic!(
            "seed {seed}: {} violations, the first 200:\n{}",
            wrong.len(),
            wrong
                .iter()
                .take(200)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
