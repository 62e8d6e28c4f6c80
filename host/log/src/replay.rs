//! Replaying: moving a plugin's cursor back (or forward) so that it is
//! delivered its tenant's events again from a position or a time.

use super::{EventLog, LogError, Seq};

/// Why a replay was refused; nothing was moved.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `from` is neither a position nor an RFC 3339 time.
    #[error("--from {0:?} is neither a position nor an RFC 3339 time")]
    BadFrom(String),
    /// No event of the tenant was appended at or after the time.
    #[error("tenant {tenant} has no event appended at or after {from}")]
    NothingSince {
        /// The tenant.
        tenant: String,
        /// The time asked for.
        from: String,
    },
    /// The position lies past the end of the log: the events appended
    /// before it would be skipped.
    #[error("position {first} is past the end of the log (its last event is at {head})")]
    PastTheEnd {
        /// The position asked for.
        first: Seq,
        /// The newest event's.
        head: Seq,
    },
    /// The plugin has never consumed this log.
    #[error("{tenant}/{plugin} has no cursor: it has never consumed this log")]
    NoCursor {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a replay did: the cursor before, and where delivery resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The plugin's cursor before.
    pub before: Seq,
    /// The first position delivered again.
    pub first: Seq,
}

/// Moves `plugin`'s cursor so that it is delivered its tenant's events
/// again from `from`: a position, or an RFC 3339 time (the first event
/// appended at or after it). A running host picks it up within a second.
/// Blocking.
pub fn replay(
    log: &dyn EventLog,
    tenant: &str,
    plugin: &str,
    from: &str,
) -> Result<Replayed, ReplayError> {
    let first = match from.parse::<u64>() {
        Ok(seq) => seq.max(1),
        Err(_) => {
            let time =
                time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| ReplayError::BadFrom(from.to_owned()))?;
            let at_ms = i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            log.first_since(tenant, at_ms)?
                .ok_or_else(|| ReplayError::NothingSince {
                    tenant: tenant.to_owned(),
                    from: from.to_owned(),
                })?
        }
    };
    let head = log.head()?;
    if first > head + 1 {
        return Err(ReplayError::PastTheEnd { first, head });
    }
    let before = log
        .cursor(tenant, plugin)?
        .ok_or_else(|| ReplayError::NoCursor {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
        })?;
    log.commit_cursor(tenant, plugin, first - 1).wait()?;
    Ok(Replayed { before, first })
}
