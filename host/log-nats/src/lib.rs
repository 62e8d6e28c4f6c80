//! The NATS JetStream backend of the plugbus event log: the same contract
//! as the embedded SQLite log ([`plugbus_log::EventLog`]), kept in a NATS
//! system that several plugbus hosts share.
//!
//! # Where things are
//! With the prefix `plugbus` (see [`NatsLogConfig::prefix`]):
//! - the stream `plugbus_events` holds the events, those of tenant `t` in
//!   partition `n` ([`NatsLogConfig::partitions`]) on the subject
//!   `plugbus.events.t.n`; an event's position ([`Seq`](plugbus_log::Seq)) is its
//!   stream sequence. Every append carries a message id derived from
//!   (tenant, source, id) ([`names::ingest_id`]), so the stream's
//!   duplicate window is the log's;
//! - the stream `plugbus_emits` indexes the events each plugin emitted
//!   (subject `plugbus.emits.<tenant>.<plugin>`, the last 1,000 per plugin);
//! - key-value buckets keep the rest: `plugbus_cursors` (each plugin's
//!   cursor, what it finished ahead, and the number of its last applied
//!   commit), `plugbus_commits` (each plugin's last commit, written before
//!   it is applied), `plugbus_state`, `plugbus_dead_letters` and
//!   `plugbus_quarantines`, `plugbus_chunks` (the parts of records larger
//!   than the server's `max_payload`); `plugbus_leases` and `plugbus_hosts` say which
//!   host handles which plugin (see `leases`).
//!
//! # A commit, and a crash in the middle of one
//! A [`Commit`](plugbus_log::Commit) touches several records, which
//! JetStream cannot change in one transaction. So the whole commit is
//! first written as one record (`plugbus_commits`, key
//! `<tenant>.<plugin>`, numbered), then applied step by step, each step
//! idempotent: the emitted events (message ids from the commit's number
//! and the emit's index, so a repeat is a duplicate), the state writes,
//! the dead letters, and last the cursor record, which names the commit
//! as applied. Whoever reads the plugin's cursor next and finds a commit
//! newer than the cursor record's applies it again before anything else
//! (see `progress`).
//!
//! # Sizes
//! Every message is bounded by the server's `max_payload` (1 MiB by
//! default; read from the server at connect and at every reconnect, see
//! [`NatsLog::max_payload`]). An event or a state value may take it all
//! but 1 KiB kept for headers ([`EventStore::max_event_bytes`]); a larger
//! one is refused before anything is stored ([`LogError::TooLarge`]). A
//! commit record or a dead letter larger than that is stored in parts in
//! the bucket `plugbus_chunks`, under a small record that names them (see
//! `chunks`).
//!
//! [`EventStore::max_event_bytes`]: plugbus_log::EventStore::max_event_bytes
//!
//! # Threads
//! The log runs its own small runtime (two threads named `plugbus-nats`),
//! where the NATS client lives; see `bridge`.

mod bridge;
mod chunks;
pub mod config;
#[cfg(test)]
mod costs;
mod error;
mod events;
mod leases;
mod letters;
pub mod names;
mod progress;

use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream;
use plugbus_log::{LogError, LogHealth, now_ms};

use self::bridge::Bridge;
pub use self::config::{NatsAuth, NatsLogConfig, NatsTls, Prefix, PrefixError};
pub use self::error::BackendError;
use self::names::Names;
pub use self::progress::ProgressError;

/// The event log in NATS JetStream. Cheap to clone: clones share one
/// connection.
#[derive(Debug, Clone)]
pub struct NatsLog {
    inner: Arc<Inner>,
}

/// What the log's roles share.
#[derive(Debug)]
pub(crate) struct Inner {
    /// `nats <first server>`: names the backend in errors.
    pub(crate) backend: String,
    /// The settings.
    pub(crate) config: NatsLogConfig,
    /// The names of the stream, subjects, buckets and keys.
    pub(crate) names: Names,
    /// The client.
    pub(crate) client: async_nats::Client,
    /// JetStream, through the client.
    pub(crate) js: jetstream::Context,
    /// The events.
    pub(crate) events: jetstream::stream::Stream,
    /// The index of emitted events.
    pub(crate) emits: jetstream::stream::Stream,
    /// The buckets.
    pub(crate) buckets: Buckets,
    /// Whether the log can be written, and since when; shared with the
    /// client's event callback, which notes disconnections as they happen.
    pub(crate) health: Arc<Mutex<Health>>,
    /// What the progress role (cursors, commits, state) keeps in memory.
    pub(crate) progress_state: progress::ProgressState,
    /// What the dead-letter and quarantine roles keep in memory.
    pub(crate) letter_state: letters::LettersState,
    /// The runtime the client lives on; dropped last.
    pub(crate) bridge: Bridge,
}

/// The key-value buckets of the log.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// `<tenant>.<plugin>` → [`progress::CursorRecord`].
    pub(crate) cursors: jetstream::kv::Store,
    /// `<tenant>.<plugin>` → [`progress::CommitRecord`].
    pub(crate) commits: jetstream::kv::Store,
    /// `<tenant>.<plugin>.k<key in base64url>` → the value.
    pub(crate) state: jetstream::kv::Store,
    /// `<tenant>.<plugin>.<seq>` → a dead letter.
    pub(crate) dead_letters: jetstream::kv::Store,
    /// `<tenant>.<plugin>` → a quarantine.
    pub(crate) quarantines: jetstream::kv::Store,
    /// `<tenant>.<plugin>` → a lease (see `leases`).
    pub(crate) leases: jetstream::kv::Store,
    /// `<host id>` → a live host's entry (see `leases`).
    pub(crate) hosts: jetstream::kv::Store,
    /// The parts of commit records and dead letters larger than the
    /// server's `max_payload` (see `chunks`).
    pub(crate) chunks: jetstream::kv::Store,
}

impl NatsLog {
    /// Connects to NATS and creates the stream and buckets where they are
    /// missing (or updates their settings). Blocking: it waits at most the
    /// configured connect timeout for the first connection.
    pub fn open(config: NatsLogConfig) -> Result<Self, LogError> {
        let backend = format!(
            "nats {}",
            config.servers.first().map_or("(no server)", String::as_str)
        );
        let bridge = Bridge::start().map_err(|e| LogError::Backend {
            backend: backend.clone(),
            operation: "start the NATS client's threads".to_owned(),
            source: Box::new(e),
        })?;
        let names = Names::new(&config.prefix);
        let health = Arc::new(Mutex::new(Health::new(now_ms())));
        let (client, js, events, emits, buckets) = {
            let (config, names, backend) = (config.clone(), names.clone(), backend.clone());
            let health = health.clone();
            // Through `block`, not `Handle::block_on`: `open` may be called
            // on another runtime's thread.
            bridge.block(async move {
                let client = connect(&config, &backend, health).await?;
                let js = jetstream::ContextBuilder::new()
                    .timeout(config.request_timeout)
                    .build(client.clone());
                let (events, emits, buckets) = setup(&js, &config, &names, &backend).await?;
                Ok::<_, LogError>((client, js, events, emits, buckets))
            })?
        };
        let inner = Arc::new(Inner {
            backend,
            config,
            names,
            client,
            js,
            events,
            emits,
            buckets,
            health,
            progress_state: progress::ProgressState::default(),
            letter_state: letters::LettersState::default(),
            bridge,
        });
        letters::start(&inner)?;
        Ok(Self { inner })
    }

    /// The servers the log was given, for an operator's log line.
    pub fn servers(&self) -> &[String] {
        &self.inner.config.servers
    }

    /// The name of the stream that holds the events.
    pub fn stream_name(&self) -> &str {
        &self.inner.names.events_stream
    }

    /// The server's `max_payload`: the largest message (headers and
    /// payload) it takes, as the server the client is connected to now
    /// announced it (read again at every reconnect).
    pub fn max_payload(&self) -> u64 {
        self.inner.max_payload()
    }
}

/// What a message of the log may need for its headers and beyond its
/// payload, at most: a message id, the emitting plugin's name, a KV
/// operation or an expected revision. An event (or a state value) may take
/// the rest of the server's `max_payload`.
pub(crate) const HEADER_ROOM: u64 = 1024;

impl Inner {
    /// See [`NatsLog::max_payload`].
    pub(crate) fn max_payload(&self) -> u64 {
        self.client.max_payload() as u64
    }

    /// The largest payload of one record: an event's stored form, a state
    /// value, a commit record, a dead letter, a chunk.
    pub(crate) fn max_record_bytes(&self) -> u64 {
        self.max_payload().saturating_sub(HEADER_ROOM)
    }

    /// The refusal of a record of `bytes` bytes, `what`, too large for the
    /// log.
    pub(crate) fn too_large(&self, what: String, bytes: u64, index: Option<usize>) -> LogError {
        LogError::TooLarge {
            backend: self.backend.clone(),
            what,
            bytes,
            limit: self.max_record_bytes(),
            index,
        }
    }

    /// A failure of the backend while doing `operation`.
    pub(crate) fn error(
        &self,
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> LogError {
        LogError::Backend {
            backend: self.backend.clone(),
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// A record that does not parse.
    pub(crate) fn corrupt(&self, key: impl Into<String>, reason: impl ToString) -> LogError {
        LogError::CorruptRecord {
            backend: self.backend.clone(),
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// Notes how a write ended, for [`LogHealth`].
    pub(crate) fn note_write<T>(&self, result: &Result<T, LogError>) {
        if matches!(result, Err(LogError::TooLarge { .. })) {
            // A refusal of what was asked, not a failure of the log.
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.failure = result.as_ref().err().map(ToString::to_string);
        health.settle(now_ms());
    }

    /// Whether the log can be written now (connected, and the last write
    /// did not fail), and since when it is so.
    pub(crate) fn health(&self) -> LogHealth {
        let connected = matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        );
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.connected = connected;
        health.settle(now_ms());
        let error = match (&health.failure, connected) {
            _ if health.writable => None,
            (_, false) => Some(format!("not connected to NATS ({})", self.backend)),
            (failure, true) => failure.clone(),
        };
        LogHealth {
            writable: health.writable,
            error,
            since_ms: health.since_ms,
        }
    }
}

/// What [`LogHealth`] is made of: the connection, the last write, and when
/// the log last became writable or not.
#[derive(Debug)]
pub(crate) struct Health {
    /// Connected to NATS, as last seen (by the event callback or a health
    /// check).
    connected: bool,
    /// The error of the last write, until a write succeeds again.
    failure: Option<String>,
    /// Whether the log was writable when last settled.
    writable: bool,
    /// When `writable` last changed (the log's opening at first), in
    /// milliseconds since the Unix epoch.
    since_ms: i64,
}

impl Health {
    /// Connected and writable since `now_ms`.
    fn new(now_ms: i64) -> Self {
        Self {
            connected: true,
            failure: None,
            writable: true,
            since_ms: now_ms,
        }
    }

    /// Notes a change of the connection at `now_ms`.
    fn connection(&mut self, connected: bool, now_ms: i64) {
        self.connected = connected;
        self.settle(now_ms);
    }

    /// Whether the log is writable now; when that changed, `since_ms`
    /// becomes `now_ms`, and the change is logged.
    fn settle(&mut self, now_ms: i64) {
        let writable = self.connected && self.failure.is_none();
        if writable == self.writable {
            return;
        }
        self.writable = writable;
        self.since_ms = now_ms;
        if writable {
            tracing::info!("the NATS event log is writable again");
        } else {
            tracing::warn!(
                "the NATS event log cannot be written: {}",
                self.failure.as_deref().unwrap_or("not connected")
            );
        }
    }
}

/// Connects with the configured authentication and TLS, waiting at most
/// the connect timeout for the first connection; later the client
/// reconnects by itself, for ever.
async fn connect(
    config: &NatsLogConfig,
    backend: &str,
    health: Arc<Mutex<Health>>,
) -> Result<async_nats::Client, LogError> {
    let failed =
        |operation: &str, source: Box<dyn std::error::Error + Send + Sync>| LogError::Backend {
            backend: backend.to_owned(),
            operation: operation.to_owned(),
            source,
        };
    let mut options = match &config.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        NatsAuth::CredentialsFile(path) => {
            async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    failed(
                        &format!("read the credentials file {}", path.display()),
                        Box::new(e),
                    )
                })?
        }
    };
    if config.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.first {
        options = options.tls_first();
    }
    options = options
        .name("plugbus")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .event_callback(move |event| {
            let connected = match event {
                async_nats::Event::Connected => Some(true),
                async_nats::Event::Disconnected => Some(false),
                _ => None,
            };
            if let Some(connected) = connected {
                health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .connection(connected, now_ms());
            }
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            }
        });
    let servers = config
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed("parse the server URLs", Box::new(e)))?;
    tokio::time::timeout(config.connect_timeout, options.connect(servers))
        .await
        .map_err(|e| failed("connect", Box::new(e)))?
        .map_err(|e| failed("connect", Box::new(e)))
}

/// Creates the streams and buckets, or brings their settings up to date.
async fn setup(
    js: &jetstream::Context,
    config: &NatsLogConfig,
    names: &Names,
    backend: &str,
) -> Result<
    (
        jetstream::stream::Stream,
        jetstream::stream::Stream,
        Buckets,
    ),
    LogError,
> {
    let failed = |what: &str, source: Box<dyn std::error::Error + Send + Sync>| LogError::Backend {
        backend: backend.to_owned(),
        operation: format!("create or update {what}"),
        source,
    };
    let stream = |name: &str, subjects: String| jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects],
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let metadata =
        events::partition_metadata(js, &names.events_stream, config.partitions, backend).await?;
    js.create_or_update_stream(jetstream::stream::Config {
        duplicate_window: config.duplicate_window,
        metadata,
        ..stream(&names.events_stream, names.events_wildcard())
    })
    .await
    .map_err(|e| failed(&format!("the stream {}", names.events_stream), Box::new(e)))?;
    js.create_or_update_stream(jetstream::stream::Config {
        max_messages_per_subject: names::EMITS_KEPT,
        ..stream(&names.emits_stream, names.emits_wildcard())
    })
    .await
    .map_err(|e| failed(&format!("the stream {}", names.emits_stream), Box::new(e)))?;
    let get = |name: &str| {
        let name = name.to_owned();
        async move {
            js.get_stream(&name)
                .await
                .map_err(|e| failed(&format!("the stream {name}"), Box::new(e)))
        }
    };
    let (events, emits) = (
        get(&names.events_stream).await?,
        get(&names.emits_stream).await?,
    );
    let bucket = |name: String| async move {
        js.create_or_update_key_value(jetstream::kv::Config {
            bucket: name.clone(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&format!("the bucket {name}"), Box::new(e)))
    };
    let buckets = Buckets {
        cursors: bucket(names.bucket("cursors")).await?,
        commits: bucket(names.bucket("commits")).await?,
        state: bucket(names.bucket("state")).await?,
        dead_letters: bucket(names.bucket("dead_letters")).await?,
        quarantines: bucket(names.bucket("quarantines")).await?,
        leases: bucket(names.bucket("leases")).await?,
        hosts: bucket(names.bucket("hosts")).await?,
        chunks: bucket(names.bucket("chunks")).await?,
    };
    Ok((events, emits, buckets))
}
