//! The progress roles of the NATS log against a real nats-server: cursors
//! and what was finished ahead, commits (with `expected`), state and its
//! pages, a commit left half-applied by a host that died (written by hand
//! into the buckets, then found by a fresh log), and two logs committing
//! for one plugin at once.

mod common;
use common::Buckets;

use std::time::Instant;

use plugbus_core::event::Event;
use plugbus_core::state::{StateStore, StateWrite};
use plugbus_log::{
    Commit, CursorStore, DeadLetter, DeadLetterStore, EventStore, FailedAttempt, InspectStore,
    ReadLimit, StateQuery,
};
use plugbus_log_nats::{NatsLog, NatsLogConfig, names};
use plugbus_nats_server::NatsServer;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open the log")
}

fn set(key: &str, value: &str) -> StateWrite {
    StateWrite {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn delete(key: &str) -> StateWrite {
    StateWrite {
        key: key.into(),
        value: None,
    }
}

fn event(tenant: &str, id: &str) -> Event {
    Event::from_json(&format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","tenant":"{tenant}","data":{{"n":1}}}}"#
    ))
    .expect("a valid event")
}

fn commit(cursor: u64, expected: Option<u64>) -> Commit {
    Commit {
        tenant: "acme".into(),
        plugin: "p".into(),
        cursor,
        expected,
        ..Commit::default()
    }
}

fn value(log: &NatsLog, key: &str) -> Option<String> {
    log.get("acme", "p", key)
        .expect("read the state")
        .map(|v| String::from_utf8(v).expect("text"))
}

/// What these tests read and write beside the log.
impl Buckets {
    fn put(&self, bucket: &str, key: &str, value: &serde_json::Value) {
        let bucket = self.bucket(bucket);
        self.runtime
            .block_on(bucket.put(key, serde_json::to_vec(value).expect("json").into()))
            .expect("put");
    }

    fn put_raw(&self, bucket: &str, key: &str, value: &[u8]) {
        let bucket = self.bucket(bucket);
        self.runtime
            .block_on(bucket.put(key, value.to_vec().into()))
            .expect("put");
    }

    /// The value and revision of `key`.
    fn get(&self, bucket: &str, key: &str) -> Option<(serde_json::Value, u64)> {
        let bucket = self.bucket(bucket);
        let entry = self.runtime.block_on(bucket.entry(key)).expect("read")?;
        Some((
            serde_json::from_slice(&entry.value).expect("json"),
            entry.revision,
        ))
    }
}

#[test]
fn a_cursor_is_none_until_committed_then_moves() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    assert_eq!(log.cursor("acme", "p")?, None);
    assert_eq!(log.ahead("acme", "p")?, Vec::<u64>::new());
    let committed = log.commit_cursor("acme", "p", 5).wait()?;
    assert!(committed.cursor_moved);
    assert!(committed.emitted.is_empty() && committed.refused_dead_letters.is_empty());
    assert_eq!(log.cursor("acme", "p")?, Some(5));
    assert_eq!(log.cursor("acme", "q")?, None, "per plugin");
    assert_eq!(log.cursor("globex", "p")?, None, "per tenant");
    // Another log (another host) sees it.
    assert_eq!(open(&server).cursor("acme", "p")?, Some(5));
    // Without a cursor, an expected one does not match.
    let committed = log
        .commit(Commit {
            plugin: "q".into(),
            ..commit(3, Some(0))
        })
        .wait()?;
    assert!(!committed.cursor_moved);
    assert_eq!(log.cursor("acme", "q")?, None);
    Ok(())
}

#[test]
fn ahead_is_kept_only_when_the_cursor_moves_as_expected() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    log.commit_cursor("acme", "p", 5).wait()?;
    let moved = log
        .commit(Commit {
            ahead: vec![10, 12, 7],
            ..commit(8, Some(5))
        })
        .wait()?;
    assert!(moved.cursor_moved);
    assert_eq!(log.cursor("acme", "p")?, Some(8));
    assert_eq!(
        log.ahead("acme", "p")?,
        vec![10, 12],
        "at or before the cursor: dropped"
    );
    log.commit(Commit {
        ahead: vec![15],
        ..commit(11, Some(8))
    })
    .wait()?;
    assert_eq!(log.ahead("acme", "p")?, vec![12, 15]);
    // An operator rewinds from another process.
    let operator = open(&server);
    operator.commit_cursor("acme", "p", 3).wait()?;
    assert_eq!(
        operator.ahead("acme", "p")?,
        Vec::<u64>::new(),
        "moved by force"
    );
    // The consumer's commit, started from 11, leaves the cursor as it is
    // and commits the rest.
    let stale = log
        .commit(Commit {
            ahead: vec![20],
            state: vec![set("k", "v")],
            ..commit(13, Some(11))
        })
        .wait()?;
    assert!(!stale.cursor_moved);
    assert_eq!(log.cursor("acme", "p")?, Some(3));
    assert_eq!(log.ahead("acme", "p")?, Vec::<u64>::new(), "not recorded");
    assert_eq!(
        value(&log, "k").as_deref(),
        Some("v"),
        "the rest is committed"
    );
    // A cursor-only commit that does not move writes nothing: cached or
    // not, the answer is the stored cursor's.
    let again = log.commit(commit(14, Some(11))).wait()?;
    assert!(!again.cursor_moved);
    let resumed = log.commit(commit(4, Some(3))).wait()?;
    assert!(resumed.cursor_moved);
    assert_eq!(log.cursor("acme", "p")?, Some(4));
    Ok(())
}

#[test]
fn state_writes_apply_in_order_and_read_back() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    assert_eq!(value(&log, "a"), None);
    log.commit(Commit {
        state: vec![
            set("a", "1"),
            set("b", "x"),
            set("a", "2"),
            delete("b"),
            set("c", "3"),
        ],
        ..commit(1, None)
    })
    .wait()?;
    assert_eq!(value(&log, "a").as_deref(), Some("2"));
    assert_eq!(value(&log, "b"), None);
    assert_eq!(value(&log, "c").as_deref(), Some("3"));
    log.commit(Commit {
        state: vec![delete("c"), set("c", "4"), set("b", "y"), delete("b")],
        ..commit(2, Some(1))
    })
    .wait()?;
    assert_eq!(value(&log, "c").as_deref(), Some("4"));
    assert_eq!(value(&log, "b"), None);
    // Outside a commit.
    log.apply("acme", "p", &[set("d", "5"), delete("a")])?;
    assert_eq!(value(&log, "d").as_deref(), Some("5"));
    assert_eq!(value(&log, "a"), None);
    assert_eq!(log.get("acme", "other", "d")?, None, "per plugin");
    assert_eq!(log.get("globex", "p", "d")?, None, "per tenant");
    assert_eq!(log.cursor("acme", "p")?, Some(2));
    Ok(())
}

#[test]
fn state_entries_page_in_key_order() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    let keys = ["b", "a", "ä", "z", "a.b", "a/c", "ab", "", "gone"];
    let writes: Vec<_> = keys.iter().map(|k| set(k, &format!("v-{k}"))).collect();
    log.apply("acme", "p", &writes)?;
    log.apply("acme", "p", &[delete("gone")])?;
    log.apply("acme", "p2", &[set("a", "other plugin")])?;
    log.apply("acme", "p.x", &[set("a", "another")]).ok();
    let query = |prefix: &str, after: Option<&str>, limit: usize, max_bytes: u64| StateQuery {
        prefix: prefix.into(),
        after: after.map(Into::into),
        limit,
        max_bytes,
    };
    let page_keys = |page: &plugbus_log::Page<plugbus_log::StateEntry>| {
        page.items.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
    };
    let all = log.state_entries("acme", "p", &query("", None, 100, u64::MAX))?;
    assert_eq!(
        page_keys(&all),
        ["", "a", "a.b", "a/c", "ab", "b", "z", "ä"],
        "by UTF-8 bytes; deleted keys absent"
    );
    assert!(!all.more);
    assert_eq!(all.items[1].value, b"v-a");
    let first = log.state_entries("acme", "p", &query("", None, 3, u64::MAX))?;
    assert_eq!(page_keys(&first), ["", "a", "a.b"]);
    assert!(first.more);
    let second = log.state_entries("acme", "p", &query("", Some("a.b"), 3, u64::MAX))?;
    assert_eq!(page_keys(&second), ["a/c", "ab", "b"]);
    assert!(second.more);
    let last = log.state_entries("acme", "p", &query("", Some("b"), 3, u64::MAX))?;
    assert_eq!(page_keys(&last), ["z", "ä"]);
    assert!(!last.more);
    let prefixed = log.state_entries("acme", "p", &query("a", None, 10, u64::MAX))?;
    assert_eq!(page_keys(&prefixed), ["a", "a.b", "a/c", "ab"]);
    let prefixed = log.state_entries("acme", "p", &query("a", Some("a.b"), 10, u64::MAX))?;
    assert_eq!(page_keys(&prefixed), ["a/c", "ab"]);
    let prefixed = log.state_entries("acme", "p", &query("b", Some("a"), 10, u64::MAX))?;
    assert_eq!(page_keys(&prefixed), ["b"], "after before the prefix");
    // "a" + "v-a" is 4 bytes, "a.b" + "v-a.b" 8: the first comes however
    // large, the bound stops the page before the entry that crosses it.
    let bounded = log.state_entries("acme", "p", &query("a", None, 10, 1))?;
    assert_eq!(page_keys(&bounded), ["a"]);
    assert!(bounded.more);
    let bounded = log.state_entries("acme", "p", &query("a", None, 10, 12))?;
    assert_eq!(page_keys(&bounded), ["a", "a.b"]);
    assert!(bounded.more);
    let exact = log.state_entries("acme", "p", &query("a", None, 4, u64::MAX))?;
    assert_eq!(exact.items.len(), 4);
    assert!(!exact.more, "nothing left");
    let none = log.state_entries("acme", "nobody", &query("", None, 10, u64::MAX))?;
    assert!(none.items.is_empty() && !none.more);
    let other = log.state_entries("acme", "p2", &query("", None, 10, u64::MAX))?;
    assert_eq!(page_keys(&other), ["a"]);
    Ok(())
}

/// A commit record as a host writes it before applying it.
fn record(
    n: u64,
    cursor: u64,
    expected: Option<u64>,
    state: &[(&str, Option<&str>)],
) -> serde_json::Value {
    use base64::Engine as _;
    let state: Vec<_> = state
        .iter()
        .map(|(key, value)| {
            serde_json::json!({
                "key": key,
                "value": value.map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
            })
        })
        .collect();
    serde_json::json!({
        "n": n, "tenant": "acme", "plugin": "p", "cursor": cursor, "expected": expected,
        "state": state,
    })
}

const KEY: &str = "acme.p.0";

#[test]
fn a_commit_record_left_alone_is_applied_by_the_next_reader_once() -> Result {
    let server = NatsServer::start();
    drop(open(&server));
    let buckets = Buckets::connect(&server);
    // Crash right after writing the record (no cursor record yet).
    buckets.put(
        "plugbus_commits",
        KEY,
        &record(
            1,
            7,
            None,
            &[
                ("a", Some("1")),
                ("b", Some("2")),
                ("a", Some("3")),
                ("b", None),
            ],
        ),
    );
    let log = open(&server);
    assert_eq!(log.cursor("acme", "p")?, Some(7));
    assert_eq!(value(&log, "a").as_deref(), Some("3"));
    assert_eq!(value(&log, "b"), None);
    let (cursor, revision) = buckets
        .get("plugbus_cursors", KEY)
        .expect("a cursor record");
    assert_eq!(
        cursor,
        serde_json::json!({"cursor": 7, "ahead": [], "applied": 1, "epoch": 0})
    );
    // Applied once: another reader changes nothing, not even a value
    // written since.
    log.apply("acme", "p", &[set("a", "later")])?;
    assert_eq!(open(&server).cursor("acme", "p")?, Some(7));
    assert_eq!(log.ahead("acme", "p")?, Vec::<u64>::new());
    assert_eq!(
        buckets.get("plugbus_cursors", KEY).map(|(_, r)| r),
        Some(revision)
    );
    assert_eq!(value(&log, "a").as_deref(), Some("later"));
    Ok(())
}

#[test]
fn a_commit_half_applied_is_finished_by_the_next_reader() -> Result {
    let server = NatsServer::start();
    let first = open(&server);
    first.commit_cursor("acme", "p", 4).wait()?;
    first
        .commit(Commit {
            state: vec![set("count", "1")],
            ahead: vec![9],
            ..commit(5, Some(4))
        })
        .wait()?;
    drop(first);
    let buckets = Buckets::connect(&server);
    let (cursor, _) = buckets
        .get("plugbus_cursors", KEY)
        .expect("a cursor record");
    assert_eq!(
        cursor,
        serde_json::json!({"cursor": 5, "ahead": [9], "applied": 1, "epoch": 0})
    );
    // Commit 2 written, its first state write applied, then the host died.
    buckets.put(
        "plugbus_commits",
        KEY,
        &serde_json::json!({
            "n": 2, "tenant": "acme", "plugin": "p", "cursor": 6, "expected": 5,
            "state": [{"key": "count", "value": "Mg=="}, {"key": "other", "value": "eA=="}],
            "ahead": [11],
        }),
    );
    buckets.put_raw(
        "plugbus_state",
        &names::state_key("acme", "p", "count"),
        b"2",
    );
    let log = open(&server);
    assert_eq!(log.ahead("acme", "p")?, vec![9, 11]);
    assert_eq!(log.cursor("acme", "p")?, Some(6));
    assert_eq!(value(&log, "count").as_deref(), Some("2"));
    assert_eq!(value(&log, "other").as_deref(), Some("x"));
    let (cursor, _) = buckets
        .get("plugbus_cursors", KEY)
        .expect("a cursor record");
    assert_eq!(
        cursor,
        serde_json::json!({"cursor": 6, "ahead": [9, 11], "applied": 2, "epoch": 0})
    );
    // The next commit is number 3, applied on top.
    log.commit(Commit {
        state: vec![set("count", "3")],
        ..commit(7, Some(6))
    })
    .wait()?;
    let (record, _) = buckets
        .get("plugbus_commits", KEY)
        .expect("a commit record");
    assert_eq!(record["n"], 3);
    assert_eq!(value(&log, "count").as_deref(), Some("3"));
    Ok(())
}

#[test]
fn a_commit_applied_but_for_its_cursor_is_not_applied_twice_over_later_writes() -> Result {
    let server = NatsServer::start();
    drop(open(&server));
    let buckets = Buckets::connect(&server);
    // Everything but the cursor record was written; an operator had moved
    // the cursor meanwhile, so `expected` no longer holds.
    buckets.put(
        "plugbus_cursors",
        KEY,
        &serde_json::json!({"cursor": 9, "ahead": [12], "applied": 0, "epoch": 0}),
    );
    buckets.put(
        "plugbus_commits",
        KEY,
        &record(1, 7, Some(5), &[("k", Some("v"))]),
    );
    buckets.put_raw("plugbus_state", &names::state_key("acme", "p", "k"), b"v");
    let log = open(&server);
    // The next commit finds it first: it is applied, the cursor left as
    // the operator set it.
    let committed = log
        .commit(Commit {
            state: vec![set("j", "w")],
            ..commit(10, Some(9))
        })
        .wait()?;
    assert!(committed.cursor_moved);
    let (cursor, _) = buckets
        .get("plugbus_cursors", KEY)
        .expect("a cursor record");
    assert_eq!(
        cursor,
        serde_json::json!({"cursor": 10, "ahead": [12], "applied": 2, "epoch": 0})
    );
    assert_eq!(value(&log, "k").as_deref(), Some("v"));
    assert_eq!(value(&log, "j").as_deref(), Some("w"));
    Ok(())
}

#[test]
fn a_corrupt_record_is_a_clear_error() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    let buckets = Buckets::connect(&server);
    buckets.put_raw("plugbus_cursors", KEY, b"not json");
    let error = log.cursor("acme", "p").expect_err("corrupt");
    assert!(
        matches!(&error, plugbus_log::LogError::CorruptRecord { key, .. } if key.contains(KEY)),
        "{error}"
    );
    buckets.put_raw(
        "plugbus_cursors",
        "acme.q.0",
        br#"{"cursor": 1, "applied": 0}"#,
    );
    buckets.put(
        "plugbus_commits",
        "acme.q.0",
        &serde_json::json!({
            "n": 1, "tenant": "acme", "plugin": "someone-else", "cursor": 2,
        }),
    );
    let error = log
        .cursor("acme", "q")
        .expect_err("a record of another plugin");
    assert!(
        matches!(error, plugbus_log::LogError::CorruptRecord { .. }),
        "{error}"
    );
    Ok(())
}

#[test]
fn two_hosts_committing_for_one_plugin_lose_nothing() -> Result {
    let server = NatsServer::start();
    let logs = [open(&server), open(&server)];
    logs[0].commit_cursor("acme", "p", 0).wait()?;
    const EACH: usize = 40;
    // Each host commits as fast as it can: a commit either answers with
    // its effects applied, or fails (its number claimed by the other host
    // try after try) with nothing of it applied. Never silently lost.
    let answered: Vec<Vec<(String, bool)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(h, log)| {
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let key = format!("h{h}-{i}");
                            let cursor = (i * 2 + h) as u64 + 1;
                            let committed = log
                                .commit(Commit {
                                    state: vec![set(&key, "done")],
                                    ..commit(cursor, None)
                                })
                                .wait();
                            if let Ok(committed) = &committed {
                                assert!(committed.cursor_moved);
                            }
                            (key, committed.is_ok())
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a host"))
            .collect()
    });
    let page = logs[1].state_entries(
        "acme",
        "p",
        &StateQuery {
            prefix: String::new(),
            after: None,
            limit: 1000,
            max_bytes: u64::MAX,
        },
    )?;
    let stored: Vec<String> = page.items.into_iter().map(|e| e.key).collect();
    let ok: Vec<String> = {
        let mut ok: Vec<String> = answered
            .iter()
            .flatten()
            .filter(|(_, ok)| *ok)
            .map(|(key, _)| key.clone())
            .collect();
        ok.sort();
        ok
    };
    assert_eq!(stored, ok, "exactly the answered commits' state");
    assert!(ok.len() > EACH, "most commits go through: {}", ok.len());
    let buckets = Buckets::connect(&server);
    let (cursor, _) = buckets
        .get("plugbus_cursors", KEY)
        .expect("a cursor record");
    assert_eq!(
        cursor["applied"],
        ok.len() as u64,
        "each commit numbered once"
    );
    Ok(())
}

#[test]
fn a_commit_whose_cursor_another_host_rewound_keeps_the_rewind() -> Result {
    let server = NatsServer::start();
    let (consumer, operator) = (open(&server), open(&server));
    consumer.commit_cursor("acme", "p", 10).wait()?;
    // The consumer's cache says 10; the operator moves it to 2.
    consumer.commit(commit(11, Some(10))).wait()?;
    operator.commit_cursor("acme", "p", 2).wait()?;
    let committed = consumer
        .commit(Commit {
            state: vec![set("k", "v")],
            ahead: vec![14],
            ..commit(12, Some(11))
        })
        .wait()?;
    assert!(
        !committed.cursor_moved,
        "the revision check caught the rewind"
    );
    assert_eq!(operator.cursor("acme", "p")?, Some(2));
    assert_eq!(value(&operator, "k").as_deref(), Some("v"));
    let moved = consumer.commit(commit(3, Some(2))).wait()?;
    assert!(moved.cursor_moved);
    assert_eq!(operator.cursor("acme", "p")?, Some(3));
    Ok(())
}

#[test]
fn a_host_that_lost_the_plugin_cannot_commit_even_from_its_cache() -> Result {
    let server = NatsServer::start();
    let (old, new) = (open(&server), open(&server));
    // The old holder (epoch 1) commits, so its cache holds both records.
    old.commit(Commit {
        state: vec![set("k", "old-1")],
        lease: Some(1),
        ..commit(5, None)
    })
    .wait()?;
    // Another host takes the lease (epoch 2) and fences: a commit of
    // nothing but its starting cursor.
    let fence = new
        .commit(Commit {
            lease: Some(2),
            ..commit(5, Some(5))
        })
        .wait()?;
    assert!(fence.cursor_moved, "the fence finds the cursor it expects");
    // The old holder, paused past its lease, commits from its cache: it is
    // refused, and nothing of its commit is applied.
    let err = old
        .commit(Commit {
            state: vec![set("k", "old-2")],
            emitted: vec![event("acme", "from-the-old-holder")],
            lease: Some(1),
            ..commit(6, Some(5))
        })
        .wait()
        .expect_err("the old holder lost the plugin");
    assert!(
        matches!(
            err,
            plugbus_log::LogError::LeaseLost {
                epoch: 1,
                newer: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(value(&new, "k").as_deref(), Some("old-1"));
    assert_eq!(new.cursor("acme", "p")?, Some(5));
    assert!(new.read("acme", 0, 10)?.is_empty(), "nothing was emitted");
    // The new holder goes on; a commit without a lease (an operator's) is
    // never refused.
    new.commit(Commit {
        state: vec![set("k", "new")],
        lease: Some(2),
        ..commit(6, Some(5))
    })
    .wait()?;
    old.commit_cursor("acme", "p", 6).wait()?;
    assert_eq!(value(&old, "k").as_deref(), Some("new"));
    Ok(())
}

// The tests below need the events and letters roles (`publish_emitted`,
// `event_at`, `store_dead_letters`, `drop_redriven`).

#[test]
fn emitted_events_are_appended_indexed_and_listed_newest_first() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    log.append(vec![event("acme", "in-1")]).wait()?;
    let committed = log
        .commit(Commit {
            emitted: vec![
                event("acme", "out-1"),
                event("globex", "out-2"),
                event("acme", "out-3"),
            ],
            ..commit(1, None)
        })
        .wait()?;
    assert_eq!(committed.emitted.len(), 3);
    let page = log.emitted("acme", "p", None, ReadLimit::events(10))?;
    let ids: Vec<_> = page.items.iter().map(|s| s.event.id().to_owned()).collect();
    assert_eq!(ids, ["out-3", "out-1"], "newest first, own tenant only");
    assert!(!page.more);
    let first = log.emitted("acme", "p", None, ReadLimit::events(1))?;
    assert_eq!(first.items.len(), 1);
    assert!(first.more);
    let before = log.emitted(
        "acme",
        "p",
        Some(committed.emitted[2]),
        ReadLimit::events(10),
    )?;
    assert_eq!(before.items.len(), 1);
    assert_eq!(before.items[0].seq, committed.emitted[0]);
    assert!(
        log.emitted("acme", "q", None, ReadLimit::events(10))?
            .items
            .is_empty()
    );
    Ok(())
}

#[test]
fn a_commit_with_emitted_events_left_alone_publishes_them_once() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    log.commit(Commit {
        emitted: vec![event("acme", "first")],
        ..commit(1, None)
    })
    .wait()?;
    drop(log);
    let buckets = Buckets::connect(&server);
    // Commit 2 written and its first event published, then the host died.
    let emitted = [event("acme", "e-1"), event("acme", "e-2")];
    let raw: Vec<serde_json::Value> = emitted
        .iter()
        .map(|e| serde_json::from_str(&e.to_json_string()).expect("json"))
        .collect();
    buckets.put(
        "plugbus_commits",
        KEY,
        &serde_json::json!({
            "n": 2, "tenant": "acme", "plugin": "p", "cursor": 2, "emitted": raw,
            "state": [{"key": "k", "value": "dg=="}],
        }),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", names::emit_id("acme", "p", 0, 2, 0).as_str());
    headers.insert("Plugbus-Emitted-By", "p");
    buckets.runtime.block_on(async {
        buckets
            .js
            .publish_with_headers(
                "plugbus.events.acme.0",
                headers,
                emitted[0].to_json_string().into(),
            )
            .await?
            .await
            .map(drop)
    })?;
    let log = open(&server);
    assert_eq!(log.cursor("acme", "p")?, Some(2));
    assert_eq!(value(&log, "k").as_deref(), Some("v"));
    let ids: Vec<_> = log
        .read("acme", 0, 100)?
        .into_iter()
        .map(|s| s.event.id().to_owned())
        .collect();
    assert_eq!(ids, ["first", "e-1", "e-2"], "each once");
    assert_eq!(open(&server).cursor("acme", "p")?, Some(2));
    assert_eq!(log.read("acme", 0, 100)?.len(), 3);
    Ok(())
}

#[test]
fn dead_letters_and_redrives_commit_with_the_cursor() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    let appended = log
        .append(vec![event("acme", "bad-1"), event("acme", "bad-2")])
        .wait()?;
    let attempt = FailedAttempt {
        kind: plugbus_core::FailureKind::HandlerPermanent,
        message: "no".into(),
        fuel: 1,
        plugin_version: "1".into(),
        at_ms: 1,
    };
    let letters: Vec<_> = appended
        .iter()
        .zip(["bad-1", "bad-2"])
        .map(|(a, id)| DeadLetter {
            seq: a.seq,
            event: event("acme", id),
            attempts: vec![attempt.clone()],
        })
        .collect();
    let committed = log
        .commit(Commit {
            dead_letters: letters.clone(),
            ..commit(appended[1].seq, None)
        })
        .wait()?;
    assert!(committed.refused_dead_letters.is_empty());
    assert_eq!(log.dead_letters("acme", "p")?, letters);
    log.commit(Commit {
        redriven: vec![appended[0].seq],
        ..commit(appended[1].seq, Some(appended[1].seq))
    })
    .wait()?;
    assert_eq!(log.dead_letters("acme", "p")?, letters[1..].to_vec());
    Ok(())
}

/// Not a test: commit latency and throughput, for the report
/// (`cargo test -p plugbus-log-nats --test progress -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement"]
fn measure_commits() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    log.commit_cursor("acme", "p", 0).wait()?;
    let rounds = 2000u64;
    let mut cursor = 0;
    let mut measure = |name: &str, state: bool, emit: bool| -> Result {
        let mut took = Vec::new();
        let start = Instant::now();
        for i in 1..=rounds {
            let expected = cursor;
            let one = Instant::now();
            let c = Commit {
                emitted: if emit {
                    vec![event("acme", &format!("{name}-{i}"))]
                } else {
                    Vec::new()
                },
                state: if state {
                    vec![set(&format!("k{}", i % 100), "v")]
                } else {
                    Vec::new()
                },
                ..commit(expected + 1, Some(expected))
            };
            assert!(log.commit(c).wait()?.cursor_moved);
            cursor += 1;
            took.push(one.elapsed());
        }
        let total = start.elapsed();
        took.sort();
        println!(
            "{name}: {rounds} commits one at a time in {total:?}: {:.0}/s, p50 {:?}, p99 {:?}",
            rounds as f64 / total.as_secs_f64(),
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
        Ok(())
    };
    measure("cursor only", false, false)?;
    measure("cursor + one state write", true, false)?;
    measure("cursor + one state write + one emitted event", true, true)?;
    // Many plugins at once, as a host's consumers commit.
    let plugins = 32;
    let per = 200u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for p in 0..plugins {
            let log = &log;
            scope.spawn(move || {
                let plugin = format!("p{p}");
                for i in 1..=per {
                    log.commit(Commit {
                        plugin: plugin.clone(),
                        state: vec![set("k", "v")],
                        ..commit(i, None)
                    })
                    .wait()
                    .expect("commit");
                }
            });
        }
    });
    let total = start.elapsed();
    println!(
        "{plugins} plugins committing at once (cursor + one state write): {} commits in {total:?}: {:.0}/s",
        plugins as u64 * per,
        (plugins as u64 * per) as f64 / total.as_secs_f64()
    );
    Ok(())
}
