//! `cargo xtask demo` against the real host: the real `xtask` binary runs
//! the real `plugbus serve` (on a free port, in a temporary folder), and the
//! tests signal the demo process alone, never its group, as a supervisor or
//! a script does. After SIGINT or SIGTERM the demo stops the host, waits for
//! it and exits with its status; after SIGKILL (Linux) the kernel stops the
//! host. Meanwhile a second demo leaves the running host's folder alone, and
//! a plugin copied into a `--plugins` folder is loaded by the running host.
//!
//! The host binary is `target/debug/plugbus` beside the xtask binary, which
//! `cargo test --workspace` (`cargo xtask test`) builds for the host's own
//! tests; `PLUGBUS_BIN` names another.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// A bound on waits that only keeps a broken run from hanging; nothing is
/// asserted about how long anything takes.
const PATIENCE: Duration = Duration::from_secs(600);

/// How long a host may take to go once its demo has gone: it finishes what
/// is under way for at most `drain_seconds` (30 s); many times that.
const HOST_GONE_PATIENCE: Duration = Duration::from_secs(180);

fn host_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PLUGBUS_BIN") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .with_file_name(format!("plugbus{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "no host binary at {}: run these tests with `cargo xtask test` (cargo test --workspace \
         builds it), or build it first (cargo build --workspace --bin plugbus --examples), or \
         set PLUGBUS_BIN",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the name, which is in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    } else {
        Pid::from_raw(i32::try_from(pid).expect("a pid"))
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid")).expect("not 0");
    rustix::process::kill_process(pid, signal).expect("signal the process");
}

/// A running `cargo xtask demo`.
struct Demo {
    process: Child,
    /// The pid of its `plugbus serve`.
    host: u32,
    /// The demo's folder (plugins/ and data/).
    dir: PathBuf,
    /// Its stderr (its steps and the host's log), line by line.
    lines: mpsc::Receiver<String>,
    /// Everything read from `lines` so far, for failure messages.
    seen: Vec<String>,
}

impl Demo {
    fn start(dir: &Path, extra: &[&str]) -> Demo {
        let mut process = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("demo")
            .arg("--server")
            .arg(host_binary())
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cargo xtask demo");
        let stderr = process.stderr.take().expect("piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            process,
            host: 0,
            dir: dir.to_owned(),
            lines,
            seen: Vec::new(),
        };
        let started = demo.wait_for("[demo] started plugbus serve as process ");
        demo.host = started
            .split("as process ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {started:?}"));
        demo.wait_for("[demo] serving on http://");
        assert!(alive(demo.host), "the host is not running");
        demo
    }

    /// Reads stderr up to the first line that contains `text`.
    fn wait_for(&mut self, text: &str) -> String {
        self.wait_for_all(&[text])
    }

    /// Reads stderr up to the first line that contains each of `texts`.
    fn wait_for_all(&mut self, texts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if texts.iter().all(|text| line.contains(text)) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {texts:?} ({e}); the demo said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the demo to exit.
    fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait for the demo") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit; it said:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the host is gone.
    fn assert_host_gone(&self) {
        let deadline = Instant::now() + HOST_GONE_PATIENCE;
        while alive(self.host) {
            assert!(
                Instant::now() < deadline,
                "the host {} outlived its demo",
                self.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    /// Leaves no process behind when a test fails.
    fn drop(&mut self) {
        if self.host != 0 && alive(self.host) {
            signal(self.host, Signal::KILL);
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn stopped_by(stop: Signal) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut demo = Demo::start(&tmp.path().join("demo"), &[]);
    signal(demo.process.id(), stop);
    let status = demo.exit();
    demo.assert_host_gone();
    // The host stopped gracefully, and the demo reports its status.
    assert!(
        status.success(),
        "{status}; the demo said:\n{}",
        demo.seen.join("\n")
    );
}

#[test]
fn sigint_to_the_demo_alone_stops_the_host() {
    stopped_by(Signal::INT);
}

#[test]
fn sigterm_to_the_demo_alone_stops_the_host() {
    stopped_by(Signal::TERM);
}

#[test]
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn the_host_does_not_outlive_a_killed_demo() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut demo = Demo::start(&tmp.path().join("demo"), &[]);
    signal(demo.process.id(), Signal::KILL);
    demo.exit();
    demo.assert_host_gone();
}

#[test]
fn a_second_demo_leaves_a_running_hosts_folder_alone_and_plugins_are_copied_in() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(mine.join("acme-pos")).expect("create my plugins' folder");
    let mut demo = Demo::start(
        &tmp.path().join("demo"),
        &["--plugins", mine.to_str().expect("a UTF-8 path")],
    );

    let second = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("demo")
        .arg("--server")
        .arg(host_binary())
        .arg("--dir")
        .arg(&demo.dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .expect("run a second demo");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    if cfg!(target_os = "linux") {
        assert!(
            said.contains(&format!("in use by process {}", demo.host)),
            "{said}"
        );
    }
    assert!(said.contains("Nothing was deleted"), "{said}");
    assert!(demo.dir.join("data/events.db").is_file());
    assert!(alive(demo.host));

    // A plugin put into the --plugins folder while the demo runs is copied
    // in and loaded.
    std::fs::copy(
        plugbus_artifacts::AUDIT_LOG,
        mine.join("acme-pos/my-audit.wasm"),
    )
    .expect("copy a plugin");
    demo.wait_for_all(&["[demo] copied", "my-audit.wasm"]);
    demo.wait_for_all(&["plugin loaded", "my-audit"]);

    signal(demo.process.id(), Signal::INT);
    demo.exit();
    demo.assert_host_gone();
}
