//! The dead-letter and quarantine roles ([`DeadLetterStore`],
//! [`QuarantineStore`]): dead letters in their bucket under each tenant's
//! quota, redrive requests, and the depths every host sees (kept by a
//! watcher of the bucket, started by [`start`]).

use std::sync::Arc;

use plugbus_log::{
    DeadLetter, DeadLetterDepths, DeadLetterStore, LogError, Quarantine, QuarantineChange,
    QuarantineStore, Reply, Seq,
};

use crate::{Inner, NatsLog};

/// What the dead-letter and quarantine roles keep in memory.
#[derive(Debug, Default)]
pub(crate) struct LettersState {}

/// Starts what the roles run in the background (the depths watcher).
pub(crate) fn start(inner: &Arc<Inner>) -> Result<(), LogError> {
    let _ = inner;
    Ok(())
}

/// Stores the dead letters of a commit of `plugin` of `tenant` within the
/// tenant's quota; a dead letter that replaces an earlier one of the same
/// event (a failed redrive) is always kept. Answers the positions of those
/// not kept. Idempotent: storing the same dead letters again changes
/// nothing.
pub(crate) async fn store_dead_letters(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    dead_letters: &[DeadLetter],
) -> Result<Vec<Seq>, LogError> {
    let _ = (inner, tenant, plugin, dead_letters);
    todo!("store_dead_letters")
}

/// Deletes the dead letters of `plugin` of `tenant` that were redriven and
/// handled. Idempotent.
pub(crate) async fn drop_redriven(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    seqs: &[Seq],
) -> Result<(), LogError> {
    let _ = (inner, tenant, plugin, seqs);
    todo!("drop_redriven")
}

impl DeadLetterStore for NatsLog {
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        let _ = (tenant, plugin);
        todo!("dead_letters")
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        let _ = tenant;
        todo!("dead_letter_plugins")
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        let _ = (tenant, plugin, seq);
        todo!("discard_dead_letter")
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        let _ = (tenant, plugin, seq);
        todo!("request_redrive")
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let _ = (tenant, plugin, limit);
        todo!("redrives")
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        todo!("dead_letter_depths")
    }
}

impl QuarantineStore for NatsLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        let _ = change;
        todo!("set_quarantine")
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        todo!("quarantines")
    }
}
