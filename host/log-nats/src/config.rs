//! The settings of a [`NatsLog`](crate::NatsLog): which servers, how to
//! authenticate, and how the stream and buckets are named and replicated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use plugbus_log::DeadLetterQuota;

/// How a [`NatsLog`](crate::NatsLog) reaches NATS and lays out its data.
#[derive(Debug, Clone)]
pub struct NatsLogConfig {
    /// The servers to connect to (`nats://host:4222`, `tls://host:4222`);
    /// the client also learns the other members of a cluster from them.
    pub servers: Vec<String>,
    /// How to authenticate (default: not at all).
    pub auth: NatsAuth,
    /// TLS settings (default: TLS only when a `tls://` URL or the server
    /// asks for it).
    pub tls: NatsTls,
    /// The prefix of every name the log uses (default `plugbus`): the
    /// stream `<PREFIX>_events` with the subjects `<prefix>.events.<tenant>`,
    /// and the buckets `<prefix>_cursors`, `<prefix>_commits`,
    /// `<prefix>_state`, `<prefix>_dead_letters` and
    /// `<prefix>_quarantines`. Two plugbus deployments on one NATS system
    /// use two prefixes. A [`Prefix`] is checked when it is made.
    pub prefix: Prefix,
    /// How many partitions each tenant's events are split into (1 to
    /// [`plugbus_log::MAX_PARTITIONS`], default 1): by partition key
    /// ([`plugbus_log::partition_of`]), each (plugin, partition) delivered
    /// by one host at a time, in order. A property of the log: recorded
    /// in the events stream's metadata when the stream is made, and a log
    /// opened with another count does not open (there is no
    /// re-partitioning).
    pub partitions: plugbus_log::Partition,
    /// How many servers keep each stream and bucket (1, 3 or 5; default 1).
    /// A cluster of three with 3 replicas survives the loss of one server.
    pub replicas: usize,
    /// How long an appended (tenant, source, id) makes a second append of
    /// it a duplicate: the stream's duplicate window (default 24 hours).
    pub duplicate_window: Duration,
    /// How long one request to the server may take before it fails
    /// (default 10 s).
    pub request_timeout: Duration,
    /// How long to wait for the first connection before the log does not
    /// open (default 10 s). Later disconnections are retried for ever.
    pub connect_timeout: Duration,
    /// Every tenant's dead-letter quota, unless `tenant_dead_letters`
    /// names the tenant (default 100,000 dead letters and 1 GiB).
    pub dead_letters: DeadLetterQuota,
    /// Dead-letter quotas of particular tenants, by tenant.
    pub tenant_dead_letters: HashMap<String, DeadLetterQuota>,
}

impl Default for NatsLogConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            prefix: Prefix::default(),
            partitions: 1,
            replicas: 1,
            duplicate_window: Duration::from_secs(24 * 60 * 60),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            dead_letters: DeadLetterQuota::default(),
            tenant_dead_letters: HashMap::new(),
        }
    }
}

/// How the log authenticates to NATS. Secrets are read from where the
/// operator keeps them, never written to a log line.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No authentication.
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A `.creds` file (a JWT and an NKey seed), as `nsc` writes it.
    CredentialsFile(PathBuf),
    /// An NKey seed.
    NKey(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Names the kind of authentication, never its secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(…)"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, …)"),
            Self::CredentialsFile(path) => write!(f, "CredentialsFile({path:?})"),
            Self::NKey(_) => f.write_str("NKey(…)"),
        }
    }
}

/// TLS to NATS, as async-nats offers it.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// Refuse to talk to a server without TLS.
    pub required: bool,
    /// Certificates (PEM) of the authorities that signed the servers'
    /// certificates, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify
    /// clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Start TLS before the server's INFO (the server's
    /// `handshake_first`).
    pub first: bool,
}

/// The prefix of a deployment's stream, subjects and buckets: 1 to 32 of
/// `a-z`, `0-9` and `_`, starting with a letter (so that it is a valid
/// subject token and part of a valid stream and bucket name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "NATS prefix {given:?}: use 1 to 32 of a-z, 0-9 and _, starting with a letter (it names the stream, its subjects and the buckets)"
)]
pub struct PrefixError {
    /// The prefix given, shortened to 64 characters.
    pub given: String,
}

impl Prefix {
    /// Checks `prefix`.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let valid = (1..=32).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(PrefixError {
                given: prefix.chars().take(64).collect(),
            })
        }
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self("plugbus".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_a_subject_token_and_a_stream_name_part() {
        assert!(Prefix::new("plugbus").is_ok());
        assert!(Prefix::new("pos_eu1").is_ok());
        for bad in [
            "",
            "Plugbus",
            "1pos",
            "pos.eu",
            "pos-eu",
            "pos*",
            "pos>",
            "a b",
            &"a".repeat(33),
        ] {
            let err = Prefix::new(bad).expect_err(bad);
            assert!(err.to_string().contains("a-z, 0-9 and _"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let shown = format!(
            "{:?} {:?} {:?}",
            NatsAuth::Token("s3cret".into()),
            NatsAuth::UserPassword {
                user: "pos".into(),
                password: "s3cret".into()
            },
            NatsAuth::NKey("SUACSSL3U…s3cret".into())
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("pos"), "{shown}");
    }
}
