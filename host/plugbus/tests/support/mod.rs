//! A `plugbus serve` process for the tests that drive it over HTTP: started
//! on a free port with a configuration the test writes, its delivery lines
//! (stdout) and log (stderr) collected as it runs.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `plugbus serve` with HTTP on a free port.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub stdout: std::sync::mpsc::Receiver<serde_json::Value>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Runs `plugbus serve --config CONFIG` and waits until it listens.
    pub fn start(config: &Path) -> Self {
        Self::start_command(Command::new(env!("CARGO_BIN_EXE_plugbus")), config)
    }

    /// Runs `command` (`plugbus`, with the environment a test gives it)
    /// with `serve --config CONFIG` and waits until it listens.
    pub fn start_command(mut command: Command, config: &Path) -> Self {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plugbus serve");
        let (lines, stdout) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = lines.send(value);
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = url_tx.send(url);
                }
                let mut log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = url_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("serve did not start: {}", stderr.lock().expect("log")));
        Self {
            child,
            url,
            stdout,
            stderr,
        }
    }

    /// The `host:port` the server listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Runs curl with `args` against `path`; returns the status and body.
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, serde_json::Value) {
        let output = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("run curl (the HTTP tests need it: apt-get install curl)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or(0);
        let body = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into()));
        (status, body)
    }

    /// Posts `body` to /v1/events as `content_type` with `token`, through
    /// curl; returns the status and body.
    pub fn post(&self, token: &str, content_type: &str, body: &str) -> (u16, serde_json::Value) {
        self.curl(
            "/v1/events",
            &[
                "-H",
                &bearer(token),
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                body,
            ],
        )
    }

    /// Waits up to `within` for delivery lines until `done` says the lines
    /// seen so far are enough; returns them.
    pub fn deliveries_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "the deliveries waited for did not come within {within:?}; saw {} lines, the last: {:#?}",
                    seen.len(),
                    seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
        seen
    }

    /// Waits for the delivery lines of `ids`, in any order.
    pub fn deliveries_of(&self, ids: &[&str]) -> Vec<serde_json::Value> {
        self.deliveries_until(Duration::from_secs(30), |seen| {
            ids.iter()
                .all(|id| seen.iter().any(|d| d["event_id"] == *id))
        })
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("log").clone()
    }

    /// Waits up to 30 seconds until `done` says what the server has
    /// logged is enough (its log is read on another thread than its
    /// delivery lines); returns it.
    pub fn log_until(&self, mut done: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log lines waited for did not come within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.child.wait().expect("exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Authorization` header of `token`.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// One sample of the Prometheus text format: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses the Prometheus text format, checking each line's shape.
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1);
                assert!(
                    matches!(kind, Some("counter" | "gauge" | "histogram" | "summary")),
                    "a TYPE line with an unknown type: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels: {line}"));
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l
                            .split_once('=')
                            .unwrap_or_else(|| panic!("a label: {line}"));
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (
                            k.to_owned(),
                            v.unwrap_or_else(|| panic!("a quoted value: {line}"))
                                .to_owned(),
                        )
                    })
                    .collect();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "a metric name: {line}"
        );
        out.push((name.to_owned(), labels, value));
    }
    out
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn value_of(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
