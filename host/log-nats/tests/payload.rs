//! The server's `max_payload` as a bound of the NATS log, against a real
//! nats-server started with a small one (64 KiB) so that the records are
//! small: an event over the limit refuses its whole append; a commit
//! record and a dead letter over it are stored in parts and read back
//! whole, also after a host died between writing the parts and the record
//! that names them, or between applying a commit and removing its parts.

mod common;
use common::Buckets;

use futures::TryStreamExt as _;
use plugbus_core::event::Event;
use plugbus_core::state::{StateStore, StateWrite};
use plugbus_log::{
    Commit, CursorStore, DeadLetter, DeadLetterStore, EventStore, FailedAttempt, LogError,
};
use plugbus_log_nats::{NatsLog, NatsLogConfig, names};
use plugbus_nats_server::NatsServer;
use sha2::Digest as _;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The server's `max_payload` in these tests.
const MAX_PAYLOAD: u64 = 64 * 1024;
/// What the log keeps of it for headers.
const HEADER_ROOM: u64 = 1024;
/// The largest event: the limit the log answers.
const LIMIT: u64 = MAX_PAYLOAD - HEADER_ROOM;

/// A server with `max_payload: 64 KiB`, and its configuration file.
fn server() -> (NatsServer, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(config.path(), format!("max_payload: {MAX_PAYLOAD}\n")).expect("write it");
    let path = config.path().to_str().expect("a UTF-8 path").to_owned();
    (NatsServer::start_with(&["-c", &path]), config)
}

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open the log")
}

/// An event of tenant `acme` whose stored form is exactly `bytes` long.
fn event_of(id: &str, bytes: u64) -> Event {
    let json = |pad: usize| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","tenant":"acme","data":{{"pad":"{}"}}}}"#,
            "x".repeat(pad)
        )
    };
    let bare = Event::from_json(&json(0))
        .expect("a valid event")
        .to_json_string()
        .len() as u64;
    let event = Event::from_json(&json(
        usize::try_from(bytes.saturating_sub(bare)).expect("small"),
    ))
    .expect("a valid event");
    assert_eq!(
        event.to_json_string().len() as u64,
        bytes,
        "the stored form"
    );
    event
}

fn commit(cursor: u64) -> Commit {
    Commit {
        tenant: "acme".into(),
        plugin: "p".into(),
        cursor,
        ..Commit::default()
    }
}

fn set(key: &str, value: Vec<u8>) -> StateWrite {
    StateWrite {
        key: key.into(),
        value: Some(value),
    }
}

/// What these tests read and write beside the log.
impl Buckets {
    fn put(&self, bucket: &str, key: &str, value: &[u8]) {
        let bucket = self.bucket(bucket);
        self.runtime
            .block_on(bucket.put(key, value.to_vec().into()))
            .expect("put");
    }

    fn get(&self, bucket: &str, key: &str) -> Option<serde_json::Value> {
        let bucket = self.bucket(bucket);
        let value = self.runtime.block_on(bucket.get(key)).expect("read")?;
        Some(serde_json::from_slice(&value).expect("json"))
    }

    /// The keys of the chunks bucket that hold a value.
    fn parts(&self) -> Vec<String> {
        let bucket = self.bucket("plugbus_chunks");
        let mut keys: Vec<String> = self
            .runtime
            .block_on(async {
                let subjects: Vec<(String, usize)> = bucket
                    .stream
                    .info_with_subjects(format!("{}>", bucket.prefix))
                    .await?
                    .try_collect()
                    .await?;
                Ok::<_, Box<dyn std::error::Error>>(subjects)
            })
            .expect("list the parts")
            .into_iter()
            .map(|(subject, _)| subject.trim_start_matches(&bucket.prefix).to_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Writes `body` in parts as the log does, under `base`; answers the
    /// `chunks` field of the record that names them.
    fn put_parts(&self, base: &str, body: &[u8]) -> serde_json::Value {
        let hash: String = sha2::Sha256::digest(body)
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        let room = usize::try_from(LIMIT).expect("small");
        let mut parts = 0u32;
        for (i, part) in body.chunks(room).enumerate() {
            self.put("plugbus_chunks", &format!("{base}.{hash}.{i}"), part);
            parts += 1;
        }
        serde_json::json!({"hash": hash, "parts": parts, "bytes": body.len()})
    }
}

#[test]
fn the_limit_is_the_servers_max_payload_less_room_for_headers() {
    let (server, _config) = server();
    let log = open(&server);
    assert_eq!(log.max_payload(), MAX_PAYLOAD);
    assert_eq!(log.max_event_bytes(), Some(LIMIT));
}

#[test]
fn an_event_over_the_limit_refuses_its_whole_append() -> Result {
    let (server, _config) = server();
    let log = open(&server);
    let refused = log
        .append(vec![
            event_of("small", 200),
            event_of("big", LIMIT + 1),
            event_of("after", 200),
        ])
        .wait();
    match refused {
        Err(LogError::TooLarge {
            bytes,
            limit,
            index,
            ..
        }) => {
            assert_eq!((bytes, limit, index), (LIMIT + 1, LIMIT, Some(1)));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(log.head()?, 0, "nothing of the request was stored");
    assert!(
        log.health().writable,
        "a refusal is not a failure of the log"
    );
    // At the limit exactly, it is stored and reads back whole.
    let at_limit = event_of("at-limit", LIMIT);
    let appended = log.append(vec![at_limit.clone()]).wait()?;
    let read = log.read("acme", 0, 10)?;
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].seq, &read[0].event), (appended[0].seq, &at_limit));
    Ok(())
}

#[test]
fn a_commit_with_an_emitted_event_over_the_limit_is_refused_before_anything_is_written() -> Result {
    let (server, _config) = server();
    let log = open(&server);
    let refused = log
        .commit(Commit {
            emitted: vec![event_of("ok", 100), event_of("big", LIMIT + 1)],
            state: vec![set("k", b"v".to_vec())],
            ..commit(1)
        })
        .wait();
    assert!(
        matches!(refused, Err(LogError::TooLarge { bytes, .. }) if bytes == LIMIT + 1),
        "{refused:?}"
    );
    let buckets = Buckets::connect(&server);
    assert_eq!(buckets.get("plugbus_commits", "acme.p.0"), None);
    assert_eq!(log.cursor("acme", "p")?, None);
    assert_eq!(log.get("acme", "p", "k")?, None);
    assert_eq!(log.head()?, 0);
    Ok(())
}

/// A commit of 24 events of 20 KiB and 8 state values of 30 KiB: about
/// 900 KiB, 14 times the server's `max_payload`.
fn large_commit(cursor: u64) -> Commit {
    Commit {
        emitted: (0..24)
            .map(|i| event_of(&format!("e-{i}"), 20 * 1024))
            .collect(),
        state: (0..8)
            .map(|i| set(&format!("k{i}"), vec![b'a' + i; 30 * 1024]))
            .collect(),
        ..commit(cursor)
    }
}

fn assert_applied(log: &NatsLog, cursor: u64) -> Result {
    let expected = large_commit(cursor);
    assert_eq!(log.cursor("acme", "p")?, Some(cursor));
    for write in &expected.state {
        assert_eq!(
            log.get("acme", "p", &write.key)?,
            write.value,
            "{}",
            write.key
        );
    }
    let ids: Vec<String> = log
        .read("acme", 0, 100)?
        .into_iter()
        .map(|s| s.event.id().to_owned())
        .collect();
    let want: Vec<String> = expected.emitted.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, want, "every emitted event, once, in order");
    Ok(())
}

#[test]
fn a_commit_larger_than_a_message_is_stored_in_parts_and_applied() -> Result {
    let (server, _config) = server();
    let log = open(&server);
    let committed = log.commit(large_commit(5)).wait()?;
    assert_eq!(committed.emitted.len(), 24);
    assert_applied(&log, 5)?;
    let buckets = Buckets::connect(&server);
    let record = buckets
        .get("plugbus_commits", "acme.p.0")
        .expect("a commit record");
    assert_eq!(record["n"], 1);
    assert!(record["chunks"]["parts"].as_u64() > Some(10), "{record}");
    assert_eq!(
        buckets.parts(),
        Vec::<String>::new(),
        "removed once applied"
    );
    // A fresh log finds it applied and does nothing again.
    let again = open(&server);
    assert_applied(&again, 5)?;
    // The next commit, small, is number 2 over it.
    again
        .commit(Commit {
            state: vec![set("k0", b"small".to_vec())],
            expected: Some(5),
            ..commit(6)
        })
        .wait()?;
    assert_eq!(again.get("acme", "p", "k0")?, Some(b"small".to_vec()));
    let record = buckets
        .get("plugbus_commits", "acme.p.0")
        .expect("a commit record");
    assert_eq!(
        (record["n"].as_u64(), record.get("chunks")),
        (Some(2), None)
    );
    Ok(())
}

/// The whole commit record of [`large_commit`] numbered `n`, as the log
/// writes it.
fn whole_record(n: u64, cursor: u64) -> serde_json::Value {
    use base64::Engine as _;
    let commit = large_commit(cursor);
    let emitted: Vec<serde_json::Value> = commit
        .emitted
        .iter()
        .map(|e| serde_json::from_str(&e.to_json_string()).expect("json"))
        .collect();
    let state: Vec<serde_json::Value> = commit
        .state
        .iter()
        .map(|w| {
            serde_json::json!({
                "key": w.key,
                "value": w.value.as_ref().map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
            })
        })
        .collect();
    serde_json::json!({
        "n": n, "tenant": "acme", "plugin": "p", "cursor": cursor, "expected": null,
        "emitted": emitted, "state": state,
    })
}

#[test]
fn a_commit_in_parts_left_alone_is_applied_by_the_next_reader_and_its_parts_removed() -> Result {
    let (server, _config) = server();
    drop(open(&server));
    let buckets = Buckets::connect(&server);
    // A host wrote the parts of commit 1 and the record naming them, then
    // died.
    let body = serde_json::to_vec(&whole_record(1, 9))?;
    let chunks = buckets.put_parts("c.acme.p.0.1", &body);
    let small = serde_json::json!({
        "n": 1, "tenant": "acme", "plugin": "p", "cursor": 9, "chunks": chunks,
    });
    buckets.put("plugbus_commits", "acme.p.0", &serde_json::to_vec(&small)?);
    assert!(buckets.parts().len() > 10);
    let log = open(&server);
    assert_applied(&log, 9)?;
    assert_eq!(
        buckets.get("plugbus_cursors", "acme.p.0"),
        Some(serde_json::json!({"cursor": 9, "ahead": [], "applied": 1, "epoch": 0}))
    );
    assert_eq!(buckets.parts(), Vec::<String>::new());
    Ok(())
}

#[test]
fn parts_no_claim_names_are_swept_and_never_applied() -> Result {
    let (server, _config) = server();
    drop(open(&server));
    let buckets = Buckets::connect(&server);
    // A host wrote the parts of commit 1, then died before its claim: no
    // record names them.
    let body = serde_json::to_vec(&whole_record(1, 3))?;
    buckets.put_parts("c.acme.p.0.1", &body);
    let log = open(&server);
    assert_eq!(log.cursor("acme", "p")?, None, "nothing was claimed");
    assert_eq!(log.head()?, 0);
    // The next commit in parts claims number 1 itself (its own parts:
    // another body, other keys), and sweeps the dead host's.
    log.commit(large_commit(4)).wait()?;
    assert_applied(&log, 4)?;
    assert_eq!(buckets.parts(), Vec::<String>::new());
    Ok(())
}

#[test]
fn parts_of_a_commit_applied_before_its_host_died_are_removed_not_applied_again() -> Result {
    let (server, _config) = server();
    let log = open(&server);
    log.commit(large_commit(5)).wait()?;
    drop(log);
    let buckets = Buckets::connect(&server);
    // As if the host died between the cursor write and removing the
    // parts: they are back (with contents that would not even parse, so
    // that reading them would fail).
    let record = buckets
        .get("plugbus_commits", "acme.p.0")
        .expect("a commit record");
    let (hash, parts) = (
        record["chunks"]["hash"].as_str().expect("a hash"),
        record["chunks"]["parts"].as_u64().expect("a count"),
    );
    for i in 0..parts {
        buckets.put(
            "plugbus_chunks",
            &format!("c.acme.p.0.1.{hash}.{i}"),
            b"left",
        );
    }
    assert_eq!(buckets.parts().len() as u64, parts);
    // A value written since is not undone by a fresh reader.
    let log = open(&server);
    log.apply("acme", "p", &[set("k0", b"later".to_vec())])?;
    assert_eq!(open(&server).cursor("acme", "p")?, Some(5));
    assert_eq!(log.get("acme", "p", "k0")?, Some(b"later".to_vec()));
    assert_eq!(
        log.read("acme", 0, 100)?.len(),
        24,
        "nothing published twice"
    );
    assert_eq!(buckets.parts(), Vec::<String>::new());
    Ok(())
}

fn attempt(message: String) -> FailedAttempt {
    FailedAttempt {
        kind: plugbus_core::FailureKind::HandlerPermanent,
        message,
        fuel: 1,
        plugin_version: "1".into(),
        at_ms: 1,
    }
}

#[test]
fn a_dead_letter_larger_than_a_message_is_stored_listed_redriven_and_discarded() -> Result {
    let (server, _config) = server();
    let log = open(&server);
    // An event of 60 KiB, and three attempts of 20 KiB each: 120 KiB.
    let appended = log.append(vec![event_of("heavy", 60 * 1024)]).wait()?;
    let seq = appended[0].seq;
    let dead = DeadLetter {
        seq,
        event: event_of("heavy", 60 * 1024),
        attempts: (0..3)
            .map(|i| attempt(format!("{i}{}", "e".repeat(20 * 1024))))
            .collect(),
    };
    let committed = log
        .commit(Commit {
            dead_letters: vec![dead.clone()],
            ..commit(seq)
        })
        .wait()?;
    assert!(committed.refused_dead_letters.is_empty());
    assert_eq!(log.dead_letters("acme", "p")?, vec![dead.clone()]);
    assert_eq!(
        log.dead_letter_depths().get(&("acme".into(), "p".into())),
        Some(&1)
    );
    let buckets = Buckets::connect(&server);
    let key = names::dead_letter_key("acme", "p", seq);
    let record = buckets
        .get("plugbus_dead_letters", &key)
        .expect("its record");
    assert!(record["chunks"]["parts"].as_u64() >= Some(2), "{record}");
    assert!(!buckets.parts().is_empty());
    // Another host sees it whole too.
    assert_eq!(open(&server).dead_letters("acme", "p")?, vec![dead.clone()]);
    // Redrive: the request is read back whole.
    assert!(log.request_redrive("acme", "p", seq).wait()?);
    assert_eq!(log.redrives("acme", "p", 10)?, vec![dead.clone()]);
    // It fails again: stored with a longer history (other parts), and the
    // parts of the first record go.
    let mut again = dead.clone();
    again.attempts.push(attempt("once more".into()));
    log.commit(Commit {
        dead_letters: vec![again.clone()],
        expected: Some(seq),
        ..commit(seq)
    })
    .wait()?;
    assert_eq!(log.dead_letters("acme", "p")?, vec![again]);
    let parts = buckets.parts();
    let hash = buckets
        .get("plugbus_dead_letters", &key)
        .expect("its record")["chunks"]["hash"]
        .as_str()
        .expect("a hash")
        .to_owned();
    assert!(
        parts.iter().all(|p| p.contains(&hash)),
        "only the parts of the record kept: {parts:?}"
    );
    // Discarded: its parts go with it.
    assert!(log.discard_dead_letter("acme", "p", seq).wait()?);
    assert_eq!(log.dead_letters("acme", "p")?, Vec::new());
    assert_eq!(buckets.parts(), Vec::<String>::new());
    Ok(())
}

/// The server's default `max_payload` (1 MiB): a commit of 3 MiB of
/// emitted events and state (the default budgets allow 4 MiB of each per
/// delivery) is applied, and its record stored in parts.
#[test]
fn a_commit_of_three_mib_is_applied_under_the_default_max_payload() -> Result {
    let server = NatsServer::start();
    let log = open(&server);
    let limit = log.max_event_bytes().expect("a bound");
    assert_eq!(limit, 1024 * 1024 - HEADER_ROOM);
    let commit = Commit {
        // 1.5 MiB of events of 256 KiB, 1.5 MiB of state values of 512 KiB.
        emitted: (0..6)
            .map(|i| event_of(&format!("e-{i}"), 256 * 1024))
            .collect(),
        state: (0..3)
            .map(|i| set(&format!("k{i}"), vec![b'a' + i; 512 * 1024]))
            .collect(),
        ..commit(3)
    };
    let started = std::time::Instant::now();
    log.commit(commit.clone()).wait()?;
    eprintln!("a commit of 3 MiB: {:?}", started.elapsed());
    let fresh = open(&server);
    assert_eq!(fresh.cursor("acme", "p")?, Some(3));
    for write in &commit.state {
        assert_eq!(fresh.get("acme", "p", &write.key)?, write.value);
    }
    assert_eq!(fresh.read("acme", 0, 100)?.len(), 6);
    let buckets = Buckets::connect(&server);
    let record = buckets
        .get("plugbus_commits", "acme.p.0")
        .expect("a commit record");
    assert!(record["chunks"]["parts"].as_u64() >= Some(4), "{record}");
    assert_eq!(buckets.parts(), Vec::<String>::new());
    Ok(())
}
