//! The log's own async runtime, and the bridge from the log's interface
//! to it: blocking reads wait for a future run there, writes answer
//! through a [`Reply`]. The NATS client lives on this runtime alone, so
//! the log works the same from a test thread, a `spawn_blocking` thread or
//! any other runtime, and never blocks a caller's runtime worker inside
//! its own.

use std::future::Future;
use std::sync::mpsc;

use plugbus_log::{LogError, Reply};

/// A small multi-threaded runtime owned by one log.
#[derive(Debug)]
pub(crate) struct Bridge {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// A handle to it, for spawning.
    handle: tokio::runtime::Handle,
}

impl Bridge {
    /// Starts the runtime's two worker threads, named `plugbus-nats`.
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plugbus-nats")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The runtime, to spawn background tasks on.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on the log's runtime and waits for it: what the
    /// blocking reads do. Safe to call from anywhere, a runtime worker
    /// included (it then blocks that worker, as every blocking read does).
    pub(crate) fn block<T, F>(&self, future: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, LogError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or(Err(LogError::Closed))
    }

    /// Runs `future` on the log's runtime; its answer comes through the
    /// returned [`Reply`].
    pub(crate) fn reply<T, F>(&self, future: F) -> Reply<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, LogError>> + Send + 'static,
    {
        let (sender, reply) = Reply::channel();
        self.handle.spawn(async move {
            sender.send(future.await);
        });
        reply
    }
}

impl Drop for Bridge {
    /// Stops the runtime without waiting for its tasks, so that a log may
    /// be dropped anywhere, on another runtime's worker too (where a
    /// runtime's ordinary drop, which blocks, is refused).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
