//! What fails in the log itself rather than in the NATS client: the
//! source of a [`LogError::Backend`](plugbus_log::LogError::Backend) when
//! there is no async-nats error to carry.

use std::time::Duration;

/// Why the dead-letter, quarantine or lease role failed without an error
/// of the NATS client. Reaches callers as the source of a
/// [`LogError::Backend`](plugbus_log::LogError::Backend): find it with
/// `downcast_ref::<plugbus_log_nats::BackendError>()`. (The commit
/// protocol's own is [`ProgressError`](crate::ProgressError).)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Other processes kept changing a record between its read and its
    /// write.
    #[error(
        "the record {key} changed under every one of {tries} tries: other processes keep writing it"
    )]
    Contended {
        /// The record's key.
        key: String,
        /// How many tries were made.
        tries: usize,
    },
    /// The server stopped delivering a bucket's records before the last
    /// one pending.
    #[error("the server stopped delivering the records before the last one")]
    Ended,
    /// No record came for `timeout` while some were pending.
    #[error("no record for {timeout:?} while records were pending")]
    Stalled {
        /// How long the log waited.
        timeout: Duration,
        /// The timer's error.
        #[source]
        source: tokio::time::error::Elapsed,
    },
    /// A host id that cannot name a key.
    #[error("the host id {host:?} is not 1 to 128 of A-Z, a-z, 0-9, - and _")]
    HostId {
        /// The id (its first 64 characters).
        host: String,
    },
    /// The server acknowledged fewer publishes than were sent.
    #[error("an acknowledgement is missing")]
    AckMissing,
    /// The connection closed while an answer was awaited.
    #[error("the connection closed")]
    ConnectionClosed,
    /// No answer came within the request timeout.
    #[error("no answer within {timeout:?}")]
    NoAnswer {
        /// The request timeout.
        timeout: Duration,
        /// The timer's error.
        #[source]
        source: tokio::time::error::Elapsed,
    },
    /// The server answered a request with an error status.
    #[error("the server answered {status} {description}")]
    Refused {
        /// The status code.
        status: u16,
        /// The server's description.
        description: String,
    },
    /// A message of a direct get without its `Nats-Sequence` header.
    #[error("a message without its sequence")]
    NoSequence,
    /// A direct get's answer without `Nats-Num-Pending`.
    #[error("the server did not say how many follow (nats-server 2.11 or later needed)")]
    NoPending,
    /// A host's entry in the registry kept changing under its own writes:
    /// another host uses the same id.
    #[error(
        "the entry of the host {host} keeps changing under it: is another host using the same id?"
    )]
    HostIdInUse {
        /// The id.
        host: String,
    },
}
