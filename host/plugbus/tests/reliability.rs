//! The embedded log under faults of its disk: a full file system makes it
//! not writable (every append refused, nothing half-stored) until space is
//! freed, when it becomes writable again by itself; a data directory
//! removed under it makes it refuse writes for good; a write-ahead log torn
//! by a crash (a frame cut short, or garbage in its last frame) loses only
//! the transactions that were not whole, and never reads garbage.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugbus::Event;
use plugbus::log::{EventStore, SqliteLog, SqliteLogConfig};

fn event(id: &str, payload_bytes: usize) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": "order.placed",
        "tenant": "acme",
        "data": "x".repeat(payload_bytes),
    }))
    .expect("a valid event")
}

/// A log whose probe runs often and writes little, so that the tests see
/// it recover soon.
fn open(dir: &Path) -> SqliteLog {
    SqliteLog::open(
        dir,
        SqliteLogConfig {
            probe_interval: Duration::from_millis(50),
            probe_bytes: 256 * 1024,
            ..SqliteLogConfig::default()
        },
    )
    .expect("open the log")
}

/// Waits until `done` holds.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None`, with the reason printed, where this environment cannot
    /// mount (not root, or no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `path` with one file, until it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_makes_the_log_not_writable_until_space_is_freed() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let data = disk.path().join("data");
    let log = open(&data);
    let mut stored = Vec::new();
    for i in 0..4 {
        let id = format!("before-{i}");
        log.append(vec![event(&id, 64 * 1024)])
            .wait()
            .expect("append while there is room");
        stored.push(id);
    }
    assert!(log.health().writable);

    let filler = disk.path().join("filler");
    fill(&filler);
    // Appends are refused, each whole: nothing of a refused one is stored.
    let mut refused = None;
    for i in 0..64 {
        let id = format!("full-{i}");
        match log.append(vec![event(&id, 256 * 1024)]).wait() {
            Ok(_) => stored.push(id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("an append on a full disk is refused");
    assert!(refused.to_string().contains("full"), "{refused}");
    let health = log.health();
    assert!(!health.writable, "{health:?}");
    assert!(
        health.error.as_deref().is_some_and(|e| e.contains("full")),
        "{health:?}"
    );
    // The probe keeps finding it full.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!log.health().writable);

    // Space freed: writable again by itself, and appends succeed.
    std::fs::remove_file(&filler).expect("free the space");
    until("the log is writable again", || log.health().writable);
    assert_eq!(log.health().error, None);
    log.append(vec![event("after", 64 * 1024)])
        .wait()
        .expect("append after the disk has room again");
    stored.push("after".into());
    let read: Vec<String> = log
        .read("acme", 0, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|s| s.event.id().to_owned())
        .collect();
    assert_eq!(read, stored, "every acknowledged event, and only those");
}

#[test]
fn a_removed_data_directory_makes_the_log_refuse_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let log = open(&data);
    log.append(vec![event("e-1", 16)]).wait().expect("append");
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    let refused = log
        .append(vec![event("e-2", 16)])
        .wait()
        .expect_err("an append into a removed log is refused");
    assert!(!log.health().writable, "{refused}");
    // A directory of the same name does not bring the old file back: the
    // log stays not writable until the host is restarted on it.
    std::fs::create_dir_all(&data).expect("recreate");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!log.health().writable);
    assert!(log.append(vec![event("e-3", 16)]).wait().is_err());
}

/// The environment variable that makes [`torn_wal_writer`] a writer.
const WRITER_DIR: &str = "PLUGBUS_TORN_WAL_WRITER_DIR";
/// The events the writer appends, one transaction each.
const WRITTEN: usize = 24;

/// Not a test of its own: run by [`a_torn_wal_tail_loses_only_whole_transactions`]
/// in a child process, it appends [`WRITTEN`] events one by one, says so,
/// and waits to be killed, so that its write-ahead log is left as a crash
/// leaves it.
#[test]
fn torn_wal_writer() {
    let Ok(dir) = std::env::var(WRITER_DIR) else {
        return;
    };
    let log = SqliteLog::open(Path::new(&dir), SqliteLogConfig::default()).expect("open");
    for i in 0..WRITTEN {
        log.append(vec![event(&format!("e-{i:02}"), 3000)])
            .wait()
            .expect("append");
    }
    println!("appended");
    std::io::stdout().flush().expect("flush");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A log in a fresh directory written by a child process that was then
/// killed with SIGKILL: its write-ahead log holds every event.
fn crashed_log() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "torn_wal_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_DIR, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the writer");
    let stdout = child.stdout.take().expect("stdout");
    let said = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("appended"));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(said, "the writer appended its events");
    let wal = data.join("events.db-wal");
    let len = std::fs::metadata(&wal).expect("a write-ahead log").len();
    assert!(
        len > 32 + 4 * FRAME,
        "the events are in the WAL: {len} bytes"
    );
    (root, data)
}

/// A WAL frame: a 24-byte header and a 4096-byte page.
const FRAME: u64 = 24 + 4096;

/// The ids read back, in order; a read error fails the test.
fn survivors(data: &Path) -> Vec<String> {
    let log = open(data);
    let ids: Vec<String> = log
        .read("acme", 0, usize::MAX)
        .expect("the recovered log reads")
        .into_iter()
        .map(|s| s.event.id().to_owned())
        .collect();
    // Still a working log: an append goes after the survivors.
    let head = log.head().expect("head");
    let appended = log
        .append(vec![event("after", 16)])
        .wait()
        .expect("append after recovery");
    assert!(appended[0].seq > head);
    drop(log);
    let db = rusqlite::Connection::open(data.join("events.db")).expect("sqlite");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    ids
}

/// What survives is a prefix of what was written, all of it intact, and
/// only the tail is lost.
fn assert_a_whole_prefix(ids: &[String]) {
    let written: Vec<String> = (0..WRITTEN).map(|i| format!("e-{i:02}")).collect();
    assert!(
        !ids.is_empty() && ids.len() < WRITTEN,
        "the torn transaction is lost, the others kept: {ids:?}"
    );
    assert_eq!(ids, &written[..ids.len()]);
}

#[test]
fn a_torn_wal_tail_loses_only_whole_transactions() {
    // Cut short in the middle of its last frame.
    let (_root, data) = crashed_log();
    let wal = data.join("events.db-wal");
    let len = std::fs::metadata(&wal).expect("wal").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open the WAL");
    file.set_len(len - FRAME / 2).expect("truncate mid-frame");
    drop(file);
    assert_a_whole_prefix(&survivors(&data));

    // Garbage in its last frame (its length intact): the frame's checksum
    // fails, and its transaction is dropped.
    let (_root, data) = crashed_log();
    let wal = data.join("events.db-wal");
    let len = std::fs::metadata(&wal).expect("wal").len();
    let mut bytes = std::fs::read(&wal).expect("read the WAL");
    let start = usize::try_from(len - FRAME / 2).expect("small");
    for b in &mut bytes[start..start + 512] {
        *b ^= 0xff;
    }
    std::fs::write(&wal, bytes).expect("write the WAL");
    assert_a_whole_prefix(&survivors(&data));
}
