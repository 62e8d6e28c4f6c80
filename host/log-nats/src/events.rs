//! The events role ([`EventStore`]): appends with message ids, reads by
//! tenant subject, counts, positions by time, and retention by purging
//! what every live plugin has finished with. Also the emitted events of a
//! commit ([`publish_emitted`]) and the index of them.
//!
//! # Stored form
//! An event is stored as its CloudEvents JSON, exactly the text the
//! embedded log stores ([`Event::to_json_string`]), on the subject of its
//! tenant; reading parses it in full ([`Event::from_json`]), so a message
//! something other than plugbus put on a tenant's subject that is not a
//! valid event is an error naming its position: [`LogError::Corrupt`]
//! with the stream (`nats <server> stream <name>`) in place of the file,
//! as the embedded log answers for a row that does not parse. Its
//! [`StoredEvent::appended_at_ms`] is the message's JetStream timestamp
//! and its [`StoredEvent::bytes`] the length of the JSON.
//!
//! # Reads
//! Reads use JetStream's batched direct get (nats-server 2.11 and later):
//! one request answers up to [`READ_BATCH`] messages of one subject from a
//! position on, each with the number of messages of the subject still
//! after it, ended by an end-of-batch status. So reading a tenant's events
//! in pages costs one round trip per page, counting what is left of a
//! tenant (a plugin's lag) costs one request whatever the count, and the
//! first event at or after a time is one request too (the request's
//! `start_time`). No consumer is created: nothing on the server to clean
//! up, and reads from several hosts do not interfere.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use async_nats::header::HeaderName;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{HeaderMap, Subject};
use futures::StreamExt as _;
use plugbus_core::event::Event;
use plugbus_log::{
    Appended, EventStore, LogError, LogHealth, Partition, Pruned, ReadLimit, Reply, Retention, Seq,
    StoredEvent, now_ms, partition_of,
};

use crate::{BackendError, Inner, NatsLog, names};

/// The header naming the plugin that emitted an event (on emitted events
/// only).
pub(crate) const EMITTED_BY: &str = "Plugbus-Emitted-By";

/// The most publishes of one append (or emit) waiting for their
/// acknowledgement at a time: enough to keep the connection busy, well
/// below the client's own bound on acknowledgements in flight (5,000),
/// which would otherwise make a larger batch wait for itself.
const PUBLISH_WINDOW: usize = 1_024;

/// The most messages one batched direct get asks for; a larger read
/// takes several.
pub(crate) const READ_BATCH: usize = 1_024;

/// What the server adds to a message's size in a batched direct get
/// beyond its payload (headers, subject), at most, as far as plugbus's
/// messages go: the byte bound asked of the server is the read's own plus
/// this per message, so that the server never stops a batch before the
/// read's own bound would (the read applies the exact bound to the
/// payloads itself and asks again when the server stopped early).
const HEADER_SLACK: u64 = 1_024;

/// Publishes the events commit number `commit` of `plugin` of `tenant`
/// emitted, with message ids from the commit's number and each emit's
/// index (a commit applied again publishes duplicates, which JetStream
/// answers with the first copy's position), and indexes those emitted into
/// the plugin's own tenant. Answers their positions, in order.
///
/// Each event goes on its own tenant's subject with the headers
/// `Nats-Msg-Id: `[`names::emit_id`]`(tenant, plugin, commit, index)` and
/// `Plugbus-Emitted-By: <plugin>`; an event of the plugin's own tenant
/// also gets an index message on `<prefix>.emits.<tenant>.<plugin>` (its
/// position as decimal text, the same message id, so that it too is
/// written once). Called again with the same arguments within the
/// duplicate window it stores nothing new and answers the same positions.
/// A failure part-way leaves a prefix (or, with publishes in flight
/// together, some) of the events stored: calling again stores the rest.
pub(crate) async fn publish_emitted(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    (partition, commit): (Partition, u64),
    events: &[Event],
) -> Result<Vec<Seq>, LogError> {
    let operation = || format!("publish the events a commit of {tenant}/{plugin} emitted");
    let mut seqs: Vec<Seq> = vec![0; events.len()];
    let mut subjects = Subjects::default();
    for wave in waves(events) {
        let messages = wave.iter().map(|&index| {
            let event = &events[index];
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                names::emit_id(tenant, plugin, partition, commit, index).as_str(),
            );
            headers.insert(EMITTED_BY, plugin);
            (subjects.of(inner, event), headers, event.to_json_string())
        });
        let appended = publish_all(inner, messages, &operation).await?;
        for (&index, appended) in wave.iter().zip(&appended) {
            seqs[index] = appended.seq;
        }
    }
    let index = events
        .iter()
        .zip(&seqs)
        .enumerate()
        .filter(|(_, (event, _))| event.tenant() == tenant)
        .map(|(index, (_, seq))| {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                names::emit_id(tenant, plugin, partition, commit, index).as_str(),
            );
            (
                Subject::from(inner.names.emits_subject(tenant, plugin)),
                headers,
                seq.to_string(),
            )
        });
    let operation = || format!("index the events a commit of {tenant}/{plugin} emitted");
    publish_all(inner, index, &operation).await?;
    Ok(seqs)
}

/// The waves in which a commit's emitted events are published, as indexes
/// into `events`: wave `w` holds the `w`-th event of each order key of each
/// tenant ([`plugbus_log::order_key`]; an event without one goes in the
/// first), in order. A wave is published only once the one before is
/// acknowledged whole, so that two events of one key are never in flight
/// together: in flight together, the first may be lost with a dropped
/// connection while the second, still in the client's buffer, is stored
/// after the reconnection, and applying the commit again would store the
/// first after the second.
fn waves(events: &[Event]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let wave = plugbus_log::order_key(event).map_or(0, |key| {
            let count = seen.entry((event.tenant(), key)).or_default();
            *count += 1;
            *count - 1
        });
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(index);
    }
    waves
}

/// The event stored at `seq`, if the stream still has it.
pub(crate) async fn event_at(inner: &Inner, seq: Seq) -> Result<Option<StoredEvent>, LogError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match inner.events.direct_get(seq).await {
        Ok(message) => {
            let at = timestamp_ms(&message.headers);
            stored(inner, seq, at, &message.payload).map(Some)
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(inner.error(format!("read the event at {seq}"), e)),
    }
}

/// Publishes `messages` (subject, headers, payload) in order, up to
/// [`PUBLISH_WINDOW`] waiting for their acknowledgements at a time, and
/// answers each one's acknowledgement as an [`Appended`]. A failure is
/// answered as soon as it is known; the messages published before it may
/// be stored (see [`EventStore::append`] on [`NatsLog`]).
async fn publish_all(
    inner: &Inner,
    messages: impl Iterator<Item = (Subject, HeaderMap, String)>,
    operation: &(dyn Fn() -> String + Sync),
) -> Result<Vec<Appended>, LogError> {
    let mut waiting: VecDeque<PublishAckFuture> = VecDeque::new();
    let mut appended = Vec::new();
    let acked = |ack: Result<async_nats::jetstream::publish::PublishAck, _>| {
        ack.map(|ack| Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
        .map_err(|e| inner.error(operation(), e))
    };
    for (subject, headers, payload) in messages {
        if waiting.len() >= PUBLISH_WINDOW
            && let Some(oldest) = waiting.pop_front()
        {
            appended.push(acked(oldest.await)?);
        }
        let future = inner
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| inner.error(operation(), e))?;
        waiting.push_back(future);
    }
    for future in waiting {
        appended.push(acked(future.await)?);
    }
    Ok(appended)
}

/// Appends `events`: see [`EventStore::append`] on [`NatsLog`].
async fn append(inner: &Inner, events: Vec<Event>) -> Result<Vec<Appended>, LogError> {
    // An event repeated within the batch is published once; the repeat
    // answers the first copy's position, as the embedded log does (and
    // as JetStream would, except that a replicated stream may refuse a
    // second copy whose first is still being stored).
    // Without a duplicate window nothing is a duplicate: no message id.
    let dedupe = !inner.config.duplicate_window.is_zero();
    // An event larger than a message may carry refuses the whole request
    // before anything of it is published.
    let limit = inner.max_record_bytes();
    let ids: Vec<String> = events
        .iter()
        .map(|event| names::ingest_id(event.tenant(), event.source(), event.id()))
        .collect();
    // Each id's first event in the batch, by its index into `published`.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    // (the event, its index in `events`, its JSON)
    let mut published: Vec<(&Event, usize, String)> = Vec::with_capacity(events.len());
    let mut answer_of = Vec::with_capacity(events.len());
    for (index, (event, id)) in events.iter().zip(&ids).enumerate() {
        match first_of.get(id.as_str()).filter(|_| dedupe) {
            Some(&first) => answer_of.push((first, true)),
            None => {
                let json = event.to_json_string();
                if json.len() as u64 > limit {
                    return Err(inner.too_large(
                        format!("the event {index} of the request"),
                        json.len() as u64,
                        Some(index),
                    ));
                }
                first_of.insert(id, published.len());
                answer_of.push((published.len(), false));
                published.push((event, index, json));
            }
        }
    }
    let mut subjects = Subjects::default();
    let messages = published.into_iter().map(|(event, index, json)| {
        let mut headers = HeaderMap::new();
        if dedupe {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, ids[index].as_str());
        }
        (subjects.of(inner, event), headers, json)
    });
    let count = events.len();
    let operation = || format!("append {count} events");
    let acks = publish_all(inner, messages, &operation).await?;
    answer_of
        .into_iter()
        .map(|(index, repeat)| {
            acks.get(index)
                .map(|ack| Appended {
                    seq: ack.seq,
                    duplicate: ack.duplicate || repeat,
                })
                .ok_or_else(|| inner.error(operation(), BackendError::AckMissing))
        })
        .collect()
}

/// One message of a batched direct get.
struct Got {
    seq: Seq,
    appended_at_ms: i64,
    message: async_nats::Message,
    /// How many messages of the subject follow this one.
    pending: Option<u64>,
}

/// What a batched direct get asks for.
#[derive(serde::Serialize, Default)]
struct BatchGet<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    next_by_subj: &'a str,
    batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<u64>,
}

/// One batched direct get: the messages of `request.next_by_subj` it
/// answers, in order (none when there are none).
async fn batch_get(inner: &Inner, request: &BatchGet<'_>) -> Result<Vec<Got>, LogError> {
    let operation = || format!("read the events of {}", request.next_by_subj);
    let body = serde_json::to_vec(request).map_err(|e| inner.error(operation(), e))?;
    let inbox = inner.client.new_inbox();
    let mut replies = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| inner.error(operation(), e))?;
    inner
        .client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{}", inner.names.events_stream),
            inbox,
            body.into(),
        )
        .await
        .map_err(|e| inner.error(operation(), e))?;
    let timeout = inner.config.request_timeout;
    let mut got = Vec::new();
    loop {
        let message = match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(inner.error(operation(), BackendError::ConnectionClosed)),
            Err(source) => {
                return Err(inner.error(operation(), BackendError::NoAnswer { timeout, source }));
            }
        };
        match message.status {
            None => {}
            // The end of the batch; not found: nothing (more) to answer.
            Some(status) if status.as_u16() == 204 || status.as_u16() == 404 => break,
            Some(status) => {
                let description = message.description.unwrap_or_default();
                return Err(inner.error(
                    operation(),
                    BackendError::Refused {
                        status: status.as_u16(),
                        description,
                    },
                ));
            }
        }
        let headers = message.headers.as_ref();
        let Some(seq) = headers.and_then(|h| header_u64(h, async_nats::header::NATS_SEQUENCE))
        else {
            return Err(inner.error(operation(), BackendError::NoSequence));
        };
        let appended_at_ms = headers.map_or(0, timestamp_ms);
        let pending = headers.and_then(|h| header_u64(h, NUM_PENDING));
        got.push(Got {
            seq,
            appended_at_ms,
            pending,
            message,
        });
        if got.len() >= request.batch {
            // The end-of-batch status follows; not waiting for it saves
            // nothing but the subscription is dropped either way.
            break;
        }
    }
    drop(replies);
    Ok(got)
}

/// The header a batched direct get puts on each message: how many
/// messages of the subject follow it.
const NUM_PENDING: HeaderName = HeaderName::from_static("Nats-Num-Pending");

/// A header's value as a number. The name is a [`HeaderName`] made once
/// (a constant), not a `&str`: a lookup by `&str` builds the name again
/// for every message read, which showed in the client's profile.
fn header_u64(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// A stored message's time (`Nats-Time-Stamp`) in milliseconds since the
/// Unix epoch; 0 when it is missing.
fn timestamp_ms(headers: &HeaderMap) -> i64 {
    headers
        .get(async_nats::header::NATS_TIME_STAMP)
        .and_then(|v| {
            time::OffsetDateTime::parse(v.as_str(), &time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(0, |t| {
            i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(0)
        })
}

/// The event a stored message holds, parsed in full.
fn stored(
    inner: &Inner,
    seq: Seq,
    appended_at_ms: i64,
    payload: &[u8],
) -> Result<StoredEvent, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        path: PathBuf::from(format!(
            "{} stream {}",
            inner.backend, inner.names.events_stream
        )),
        seq,
        reason,
    };
    let text = std::str::from_utf8(payload).map_err(|e| corrupt(e.to_string()))?;
    let event = Event::from_json(text).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredEvent {
        seq,
        appended_at_ms,
        event,
        bytes: payload.len() as u64,
    })
}

/// Reads the events on `subject` (a tenant's, or one partition's): see
/// [`EventStore::read_bounded`].
async fn read_bounded(
    inner: &Inner,
    subject: String,
    after: Seq,
    limit: ReadLimit,
) -> Result<Vec<StoredEvent>, LogError> {
    let mut out: Vec<StoredEvent> = Vec::new();
    let mut bytes = 0u64;
    let mut next = after.saturating_add(1);
    while out.len() < limit.events {
        let batch = (limit.events - out.len()).min(READ_BATCH);
        let room = limit.bytes.saturating_sub(bytes);
        let max_bytes = (limit.bytes != u64::MAX)
            .then(|| room.saturating_add(HEADER_SLACK.saturating_mul(batch as u64)));
        let got = batch_get(
            inner,
            &BatchGet {
                seq: Some(next),
                next_by_subj: &subject,
                batch,
                max_bytes,
                ..BatchGet::default()
            },
        )
        .await?;
        let Some(last) = got.last() else {
            break;
        };
        let (last_seq, more) = (last.seq, last.pending != Some(0));
        for message in got {
            let size = message.message.payload.len() as u64;
            let first = out.is_empty() && limit.first_always;
            if !first && bytes.saturating_add(size) > limit.bytes {
                return Ok(out);
            }
            out.push(stored(
                inner,
                message.seq,
                message.appended_at_ms,
                &message.message.payload,
            )?);
            bytes = bytes.saturating_add(size);
            if out.len() >= limit.events {
                return Ok(out);
            }
        }
        if !more {
            break;
        }
        next = last_seq.saturating_add(1);
    }
    Ok(out)
}

/// Counts the events on `subject` after `after`: see
/// [`EventStore::count_after`].
async fn count_after(
    inner: &Inner,
    subject: String,
    after: Seq,
    limit: u64,
) -> Result<u64, LogError> {
    if limit == 0 {
        return Ok(0);
    }
    let got = batch_get(
        inner,
        &BatchGet {
            seq: Some(after.saturating_add(1)),
            next_by_subj: &subject,
            batch: 1,
            ..BatchGet::default()
        },
    )
    .await?;
    match got.first() {
        None => Ok(0),
        Some(first) => {
            let Some(pending) = first.pending else {
                return Err(inner.error(
                    format!("count the events of {subject}"),
                    BackendError::NoPending,
                ));
            };
            Ok(pending.saturating_add(1).min(limit))
        }
    }
}

/// The position of `subject`'s first message at or after `at_ms`, if any.
async fn first_at_or_after(
    inner: &Inner,
    subject: &str,
    at_ms: i64,
) -> Result<Option<Seq>, LogError> {
    let start = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let start = start
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| inner.error(format!("find the events of {subject} since {at_ms}"), e))?;
    let got = batch_get(
        inner,
        &BatchGet {
            start_time: Some(start),
            next_by_subj: subject,
            batch: 1,
            ..BatchGet::default()
        },
    )
    .await?;
    Ok(got.first().map(|g| g.seq))
}

/// The newest position of the log: see [`EventStore::head`].
async fn head(inner: &Inner) -> Result<Seq, LogError> {
    let info = inner
        .events
        .get_info()
        .await
        .map_err(|e| inner.error("read the events stream's state", e))?;
    Ok(if info.state.messages == 0 {
        0
    } else {
        info.state.last_sequence
    })
}

/// The (tenant, partition)s that have events now.
async fn partitions_with_events(inner: &Inner) -> Result<Vec<(String, Partition)>, LogError> {
    let operation = "list the tenants with events";
    let mut subjects = inner
        .events
        .info_with_subjects(inner.names.events_wildcard())
        .await
        .map_err(|e| inner.error(operation, e))?;
    let mut tenants = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, _count) = entry.map_err(|e| inner.error(operation, e))?;
        if let Some((tenant, partition)) = inner.names.partition_of(&subject) {
            tenants.push((tenant.to_owned(), partition));
        }
    }
    tenants.sort();
    Ok(tenants)
}

/// Deletes the events of `partition` of `tenant` before `below` (never
/// one after `ceiling`, when it has one); answers how many went.
async fn purge_below(
    inner: &Inner,
    (tenant, partition): (&str, Partition),
    below: Seq,
    ceiling: Option<Seq>,
) -> Result<u64, LogError> {
    let below = match ceiling {
        Some(ceiling) => below.min(ceiling.saturating_add(1)),
        None => below,
    };
    if below <= 1 {
        return Ok(0);
    }
    let subject = inner.names.events_subject(tenant, partition);
    let purged = inner
        .events
        .purge()
        .filter(subject.clone())
        .sequence(below)
        .await
        .map_err(|e| inner.error(format!("purge the events of {subject} before {below}"), e))?;
    Ok(purged.purged)
}

/// How long after its lease last ran out a plugin still counts as live
/// for retention: one hour.
const LEASE_GRACE_MS: i64 = 60 * 60 * 1000;

/// Prunes: see [`EventStore::prune`] on [`NatsLog`].
async fn prune(
    inner: &Inner,
    retention: Retention,
    live: Vec<(String, String)>,
) -> Result<Pruned, LogError> {
    // The highest position each tenant may lose: the lowest cursor of its
    // live plugins (0 for one without a cursor yet). The log is shared: a
    // plugin loaded on another host is live too, known by its lease
    // (held within the last hour, so that one between two holders
    // counts). Cursors are read as stored (an unfinished commit is its
    // owner's to apply); one that is behind only keeps more.
    let mut live = live;
    let since = now_ms().saturating_sub(LEASE_GRACE_MS);
    live.extend(crate::leases::leased_since(inner, since).await?);
    // Each partition is purged on its own, up to the lowest cursor of
    // the live plugins in it (so that a partition without events, whose
    // cursors do not move, holds back nothing of the others).
    let mut ceilings: BTreeMap<(String, Partition), Seq> = BTreeMap::new();
    for (tenant, plugin) in &live {
        for partition in 0..inner.partitions() {
            let cursor = crate::progress::stored_cursor(inner, tenant, plugin, partition)
                .await?
                .unwrap_or(0);
            let ceiling = ceilings
                .entry((tenant.clone(), partition))
                .or_insert(cursor);
            *ceiling = (*ceiling).min(cursor);
        }
    }
    let tenants = partitions_with_events(inner).await?;
    let mut pruned = Pruned::default();
    if let Some(age) = retention.max_age {
        let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        for (tenant, partition) in &tenants {
            let subject = inner.names.events_subject(tenant, *partition);
            // Everything before the first event at or after the cutoff
            // is older; with none, every event of the tenant is.
            let keep_from = match first_at_or_after(inner, &subject, cutoff).await? {
                Some(seq) => seq,
                None => head_sequence(inner).await?.saturating_add(1),
            };
            let ceiling = ceilings.get(&(tenant.clone(), *partition)).copied();
            pruned.deleted += purge_below(inner, (tenant, *partition), keep_from, ceiling).await?;
        }
    }
    if let Some(max_bytes) = retention.max_bytes {
        // The oldest events go in growing steps of positions, each tenant
        // only up to its ceiling, until the stream is small enough or
        // nothing more may go.
        let mut step = 16u64;
        // Only grows, so that the loop ends even when the stream's first
        // event is held back by a plugin that has not finished with it.
        let mut below = 0u64;
        loop {
            let state = inner
                .events
                .get_info()
                .await
                .map_err(|e| inner.error("read the events stream's state", e))?
                .state;
            if state.bytes <= max_bytes || state.messages == 0 {
                break;
            }
            below = below.max(state.first_sequence).saturating_add(step);
            let mut gone = 0;
            for (tenant, partition) in &tenants {
                let ceiling = ceilings.get(&(tenant.clone(), *partition)).copied();
                gone += purge_below(inner, (tenant, *partition), below, ceiling).await?;
            }
            pruned.deleted += gone;
            if gone == 0 && below > state.last_sequence {
                pruned.held_back = true;
                break;
            }
            step = step.saturating_mul(2).min(4096);
        }
    }
    Ok(pruned)
}

/// The stream's last sequence, whatever it holds.
async fn head_sequence(inner: &Inner) -> Result<Seq, LogError> {
    inner
        .events
        .get_info()
        .await
        .map(|info| info.state.last_sequence)
        .map_err(|e| inner.error("read the events stream's state", e))
}

/// The metadata key of the events stream that records its partition
/// count.
pub(crate) const PARTITIONS_KEY: &str = "plugbus.partitions";

impl Inner {
    /// How many partitions each tenant's events are split into.
    pub(crate) fn partitions(&self) -> Partition {
        self.config.partitions.max(1)
    }
}

/// The subjects of one batch's events, each made once: a [`Subject`] is
/// shared, so each further event of the same (tenant, partition) costs a
/// reference count, not a `format!` and an allocation.
#[derive(Default)]
struct Subjects<'e> {
    made: HashMap<(&'e str, Partition), Subject>,
}

impl<'e> Subjects<'e> {
    /// The subject `event` is stored on: its tenant's, its partition's.
    fn of(&mut self, inner: &Inner, event: &'e Event) -> Subject {
        let partition = partition_of(event, inner.partitions());
        self.made
            .entry((event.tenant(), partition))
            .or_insert_with(|| Subject::from(inner.names.events_subject(event.tenant(), partition)))
            .clone()
    }
}

/// Why a log does not open with the configured partition count.
#[derive(Debug, thiserror::Error)]
#[error(
    "log.nats.partitions is {configured}, but the stream {stream} was made with {recorded} partitions: a log is never re-partitioned (use {recorded}, or another prefix for a new log)"
)]
pub(crate) struct PartitionMismatch {
    configured: Partition,
    recorded: String,
    stream: String,
}

/// Checks that the events stream, if it exists already, was made with
/// `partitions`; answers the metadata to make or update it with (an
/// existing stream keeps its record).
pub(crate) async fn partition_metadata(
    js: &async_nats::jetstream::Context,
    stream: &str,
    partitions: Partition,
    backend: &str,
) -> Result<HashMap<String, String>, LogError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    let mut metadata = match js.get_stream(stream).await {
        Ok(existing) => existing.cached_info().config.metadata.clone(),
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref err)
                if err.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            HashMap::new()
        }
        Err(e) => {
            return Err(LogError::Backend {
                backend: backend.to_owned(),
                operation: format!("read the stream {stream}"),
                source: Box::new(e),
            });
        }
    };
    match metadata.get(PARTITIONS_KEY) {
        Some(recorded) if *recorded != partitions.to_string() => Err(LogError::Backend {
            backend: backend.to_owned(),
            operation: "open the log".to_owned(),
            source: Box::new(PartitionMismatch {
                configured: partitions,
                recorded: recorded.clone(),
                stream: stream.to_owned(),
            }),
        }),
        Some(_) => Ok(metadata),
        None => {
            metadata.insert(PARTITIONS_KEY.to_owned(), partitions.to_string());
            Ok(metadata)
        }
    }
}

impl EventStore for NatsLog {
    /// Publishes `events` in order on their tenants' subjects, each with
    /// the message id [`names::ingest_id`]`(tenant, source, id)`, and
    /// answers once JetStream acknowledged every one (the publishes are
    /// sent one after the other without waiting, then their
    /// acknowledgements awaited). A duplicate (the same id within the
    /// stream's duplicate window, or earlier in the same batch) answers
    /// the first copy's position with `duplicate: true`.
    ///
    /// Unlike the embedded log, an append is **not all or none**:
    /// JetStream stores each message on its own. When one publish of a
    /// batch fails (the server is unreachable, times out, refuses it), the
    /// append answers [`LogError::Backend`], and the events published
    /// before it — and possibly some after it, already in flight — may be
    /// stored. Appending the whole batch again is safe: the stored ones are
    /// duplicates by their message ids (within the duplicate window) and
    /// answer their first copy's positions; the rest are stored then. The
    /// HTTP API's 503 on such an error tells the client to do just that.
    ///
    /// JetStream's atomic batch publish (nats-server 2.12+, the stream
    /// setting `allow_atomic`) would make a batch all or none, but a
    /// message id already stored makes the server refuse the whole batch
    /// instead of answering that message as a duplicate, and its one
    /// acknowledgement gives the batch's last position only: it cannot
    /// give each event its own answer, so it is not used.
    ///
    /// An event whose stored form is larger than
    /// [`max_event_bytes`](EventStore::max_event_bytes) refuses the whole
    /// append with [`LogError::TooLarge`] before anything is published:
    /// nothing of the request is stored.
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>> {
        let inner = self.inner.clone();
        self.inner.bridge.reply(async move {
            let result = append(&inner, events).await;
            inner.note_write(&result);
            result
        })
    }

    /// The server's `max_payload` (as the server the client is connected
    /// to announced it) less 1 KiB kept for the message's headers.
    fn max_event_bytes(&self) -> Option<u64> {
        Some(self.inner.max_record_bytes())
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let inner = self.inner.clone();
        let subject = self.inner.names.tenant_events(tenant);
        self.inner
            .bridge
            .block(async move { read_bounded(&inner, subject, after, limit).await })
    }

    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        let inner = self.inner.clone();
        let subject = self.inner.names.tenant_events(tenant);
        self.inner
            .bridge
            .block(async move { count_after(&inner, subject, after, limit).await })
    }

    /// `[log.nats] partitions`.
    fn partitions(&self) -> Partition {
        self.inner.partitions()
    }

    /// Reads the partition's own subject.
    fn read_partition(
        &self,
        tenant: &str,
        partition: Partition,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let inner = self.inner.clone();
        let subject = self.inner.names.events_subject(tenant, partition);
        self.inner
            .bridge
            .block(async move { read_bounded(&inner, subject, after, limit).await })
    }

    /// Counts on the partition's own subject.
    fn count_partition_after(
        &self,
        tenant: &str,
        partition: Partition,
        after: Seq,
        limit: u64,
    ) -> Result<u64, LogError> {
        let inner = self.inner.clone();
        let subject = self.inner.names.events_subject(tenant, partition);
        self.inner
            .bridge
            .block(async move { count_after(&inner, subject, after, limit).await })
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        let inner = self.inner.clone();
        let subject = self.inner.names.tenant_events(tenant);
        self.inner
            .bridge
            .block(async move { first_at_or_after(&inner, &subject, at_ms).await })
    }

    fn head(&self) -> Result<Seq, LogError> {
        let inner = self.inner.clone();
        self.inner.bridge.block(async move { head(&inner).await })
    }

    /// Purges, per tenant subject, the events past `retention.max_age`
    /// (found by time with one request per tenant, not by reading them),
    /// then, while the events stream holds more than `retention.max_bytes`
    /// (the stream's bytes: the buckets are not counted), the oldest ones.
    /// Of a tenant with live plugins only events at or before the lowest
    /// of their cursors go; `held_back` says the stream is still over
    /// `max_bytes` because of that.
    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned> {
        let inner = self.inner.clone();
        self.inner.bridge.reply(async move {
            let result = prune(&inner, retention, live).await;
            inner.note_write(&result);
            result
        })
    }

    fn health(&self) -> LogHealth {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use plugbus_core::event::Event;
    use plugbus_log::EventStore as _;
    use plugbus_nats_server::NatsServer;

    use crate::{NatsLog, NatsLogConfig};

    fn event(tenant: &str, id: &str) -> Event {
        Event::builder(tenant, id, "/plugin/counter", "count.changed")
            .build()
            .expect("an event")
    }

    #[test]
    fn two_emitted_events_of_one_key_are_never_in_one_wave() {
        let keyed = |tenant: &str, id: &str, subject: &str| {
            Event::builder(tenant, id, "/plugin/counter", "count.changed")
                .subject(subject.to_owned())
                .build()
                .expect("an event")
        };
        let events = vec![
            keyed("acme", "a1", "a"),
            keyed("acme", "b1", "b"),
            keyed("acme", "a2", "a"),
            event("acme", "none"),
            keyed("beta", "a1", "a"),
            keyed("acme", "a3", "a"),
            keyed("acme", "b2", "b"),
            event("acme", "none-2"),
        ];
        assert_eq!(
            super::waves(&events),
            vec![vec![0, 1, 3, 4, 7], vec![2, 6], vec![5]]
        );
        assert_eq!(super::waves(&[]), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn emitting_again_answers_the_same_positions_and_stores_one_copy() {
        let server = NatsServer::start();
        let log = NatsLog::open(NatsLogConfig {
            servers: vec![server.url()],
            ..NatsLogConfig::default()
        })
        .expect("open");
        log.append(vec![event("acme", "in-1")])
            .wait()
            .expect("append");
        let emitted = vec![
            event("acme", "out-1"),
            event("beta", "out-2"),
            event("acme", "out-3"),
        ];
        let inner = log.inner.clone();
        let first = {
            let (inner, emitted) = (inner.clone(), emitted.clone());
            log.inner
                .bridge
                .block(async move {
                    super::publish_emitted(&inner, "acme", "counter", (0, 1), &emitted).await
                })
                .expect("emit")
        };
        assert_eq!(first.len(), 3);
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
        let again = {
            let (inner, emitted) = (inner.clone(), emitted.clone());
            log.inner
                .bridge
                .block(async move {
                    super::publish_emitted(&inner, "acme", "counter", (0, 1), &emitted).await
                })
                .expect("emit again")
        };
        assert_eq!(again, first, "a commit applied again");
        // The next commit's emits are new even with the same events.
        let next = {
            let (inner, emitted) = (inner.clone(), emitted.clone());
            log.inner
                .bridge
                .block(async move {
                    super::publish_emitted(&inner, "acme", "counter", (0, 2), &emitted[..1]).await
                })
                .expect("emit")
        };
        assert!(next[0] > first[2]);

        let acme = log.read("acme", 0, 100).expect("read");
        let ids: Vec<&str> = acme.iter().map(|e| e.event.id()).collect();
        assert_eq!(ids, ["in-1", "out-1", "out-3", "out-1"]);
        assert_eq!(log.read("beta", 0, 100).expect("read").len(), 1);

        // Each stored event says who emitted it; the index holds the
        // positions of the plugin's own tenant's emits, once each.
        let seqs = first.clone();
        let (headers, index) = log
            .inner
            .bridge
            .block({
                let inner = inner.clone();
                async move {
                    let message = inner.events.direct_get(seqs[1]).await.expect("get");
                    let by = message
                        .headers
                        .get(super::EMITTED_BY)
                        .map(|v| v.as_str().to_owned());
                    let mut index = Vec::new();
                    let mut at = 1;
                    while let Ok(m) = inner
                        .emits
                        .direct_get_next_for_subject(
                            inner.names.emits_subject("acme", "counter"),
                            Some(at),
                        )
                        .await
                    {
                        index.push(String::from_utf8(m.payload.to_vec()).expect("text"));
                        at = m.sequence + 1;
                    }
                    Ok((by, index))
                }
            })
            .expect("inspect");
        assert_eq!(headers.as_deref(), Some("counter"));
        assert_eq!(
            index,
            [
                first[0].to_string(),
                first[2].to_string(),
                next[0].to_string()
            ]
        );
    }

    #[test]
    fn an_event_by_position_until_it_is_purged() {
        let server = NatsServer::start();
        let log = NatsLog::open(NatsLogConfig {
            servers: vec![server.url()],
            ..NatsLogConfig::default()
        })
        .expect("open");
        let appended = log
            .append(vec![event("acme", "e-1"), event("acme", "e-2")])
            .wait()
            .expect("append");
        let at = |seq| {
            let inner = log.inner.clone();
            log.inner
                .bridge
                .block(async move { super::event_at(&inner, seq).await })
                .expect("event at")
        };
        let stored = at(appended[1].seq).expect("stored");
        assert_eq!(stored.event.id(), "e-2");
        assert_eq!(
            stored,
            log.read("acme", appended[0].seq, 1).expect("read")[0]
        );
        assert_eq!(at(appended[1].seq + 10), None, "never stored");
        let none = plugbus_log::Retention {
            max_age: Some(std::time::Duration::ZERO),
            max_bytes: None,
        };
        log.prune(none, Vec::new()).wait().expect("prune");
        assert_eq!(at(appended[0].seq), None, "purged");
    }
}
