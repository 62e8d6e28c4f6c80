//! The checkpointer thread: it copies the write-ahead log's committed
//! pages into the database file (a passive SQLite checkpoint, with its
//! fsync) on its own connection, so that the writer thread does not. With
//! SQLite's automatic checkpoint, the writer stopped every 1,000 pages to
//! do it: 14% of its time with one plugin, a third with a hundred tenants.
//! A passive checkpoint waits for no one: the writer keeps appending to
//! the log and the readers keep reading while it runs. The writer still
//! checkpoints by itself if the log grows past [`WRITER_BACKSTOP_PAGES`]
//! (this thread failing or far behind).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::Connection;

use super::shared::Shared;

/// How often the checkpointer looks whether the writer committed since
/// its last checkpoint.
const INTERVAL: Duration = Duration::from_millis(200);

/// The write-ahead log's size, in pages, past which the writer
/// checkpoints by itself (SQLite's `wal_autocheckpoint`; its default is
/// 1,000).
pub(super) const WRITER_BACKSTOP_PAGES: u32 = 16_000;

/// The checkpointer of the log at `path`: stops when `stop`'s sender is
/// dropped.
pub(super) struct Checkpointer {
    conn: Connection,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Checkpointer {
    /// A checkpointer on its own connection to the file at `path` (which
    /// exists, in WAL mode).
    pub fn open(path: &Path, shared: Arc<Shared>) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        // Its own automatic checkpoint is off: it checkpoints on purpose.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            shared,
        })
    }

    /// Checkpoints every [`INTERVAL`] when the writer committed since the
    /// last time, until `stop`'s sender is dropped.
    pub fn run(self, stop: &mpsc::Receiver<()>) {
        let mut seen = self.shared.counters.commits.load(Ordering::Relaxed);
        let mut failing = false;
        loop {
            match stop.recv_timeout(INTERVAL) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let commits = self.shared.counters.commits.load(Ordering::Relaxed);
            if commits == seen {
                continue;
            }
            seen = commits;
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                Ok(()) => failing = false,
                Err(e) => {
                    // Said once per run of failures; the writer's own
                    // checkpoint past the backstop keeps the log bounded.
                    if !failing {
                        tracing::warn!(log = %self.path.display(), "cannot checkpoint the event log: {e}");
                    }
                    failing = true;
                }
            }
        }
    }
}
