//! The lease role ([`LeaseStore`]): which host handles which plugin when
//! several `plugbus serve` hosts share one NATS system.
//!
//! Two buckets (history 1):
//! - `<prefix>_hosts`, key `<host id>` → `{"expires_ms": …}`: the host
//!   registry. Each host renews its own entry; an entry whose expiry has
//!   passed (at the reader's wall clock) is not a live host. Entries long
//!   expired (an hour) are deleted by whoever lists the hosts.
//! - `<prefix>_leases`, key `<tenant>.<plugin>` →
//!   `{"holder": …, "expires_ms": …, "epoch": …}`: one lease per plugin.
//!
//! Every write is a compare-and-set on the revision the writer just read
//! (KV `update` with the expected revision; revision 0 creates), never a
//! blind put: two hosts that race for a lease both read revision `r`, one
//! writes `r+…`, the other's write fails and it is refused.
//!
//! # Epochs
//! A lease's epoch is the KV revision of the write that gave it to its
//! holder: a take writes `"epoch": 0` ("this write's revision"), and the
//! holder's renewals carry that number on. Revisions only grow within a
//! bucket, so each change of hands has a higher epoch than every one
//! before, and a holder's own renewals keep it.
//!
//! Only within a bucket: a leases bucket deleted and made again (by an
//! operator, or by the next host that opens the log) counts its revisions
//! from 1 again, below the epochs the plugins' cursor records have fenced
//! (see `progress`). Epochs that low would have every commit of the new
//! holders refused for ever, and would let a holder from before the
//! bucket was deleted commit over them. So a take also reads the fence
//! (the cursor record's epoch) and the epoch of the lease it replaces, and
//! when the revision is not above both (the `floor`), the epoch is the
//! floor plus the revision: the take writes `"floor": …`, and the epoch is
//! `floor + revision`. Revisions still grow, so the epochs of later takes
//! over the same floor grow too, and a commit under a new epoch raises the
//! floor of the next. The one epoch this cannot see is that of a holder
//! whose lease was deleted with the bucket before it committed anything:
//! if that holder still commits (it stops at its next renewal, which finds
//! its lease gone), its commit fences the plugin above the new holder, whose
//! commits are then refused ([`LogError::LeaseLost`]). Its consumer stops
//! and its keeper takes the lease again; a take by the holder itself keeps
//! its epoch only while no commit has passed it, so this one is a new
//! epoch above that commit, and delivery goes on.
//!
//! # Clocks
//! Expiries are wall-clock milliseconds written by the holder (its clock
//! plus the ttl) and compared by the others with theirs. The holder stops
//! using a lease `margin` before expiry, counting on its monotonic clock
//! from when it *sent* its last successful renewal; another host takes it
//! only `margin` after expiry ([`LeaseState::takeable`]). So the scheme
//! tolerates wall clocks that differ by up to `margin` (default: a quarter
//! of the ttl, 2.5 s of 10 s) between any two hosts; beyond that, two hosts
//! may deliver a plugin's events at once for up to the excess, and the
//! epoch check of the commit (a commit under an older epoch than the
//! newest seen is refused) still keeps the cursor from moving back.

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};
use futures::StreamExt as _;
use plugbus_log::{
    HostEntry, LeaseGrant, LeaseKey, LeaseState, LeaseStore, LeaseTerms, LogError, Reply, now_ms,
};
use serde::{Deserialize, Serialize};

use crate::{BackendError, Inner, NatsLog, names};

/// The plugins whose lease was held at some time since `since_ms` (their
/// record's expiry is later): those loaded on some host of the shared log,
/// including one between two holders. What retention counts as live
/// beside the plugins of the host that prunes.
pub(crate) async fn leased_since(
    inner: &Inner,
    since_ms: i64,
) -> Result<Vec<(String, String)>, LogError> {
    use futures::TryStreamExt as _;
    let bucket = &inner.buckets.leases;
    let keys: Vec<String> = bucket
        .keys()
        .await
        .map_err(|e| inner.error("list the leases", e))?
        .try_collect()
        .await
        .map_err(|e| inner.error("list the leases", e))?;
    let mut leased = Vec::new();
    for key in keys {
        // One lease per partition: the plugin counts once.
        let Some((tenant, plugin, _)) = names::parse_partition_key(&key) else {
            continue;
        };
        if let Found::Recorded(record, _) = inner.read::<LeaseRecord>(bucket, &key).await?
            && record.expires_ms >= since_ms
        {
            leased.push((tenant.to_owned(), plugin.to_owned()));
        }
    }
    leased.sort();
    leased.dedup();
    Ok(leased)
}

/// How long after its expiry a host's entry is deleted by whoever lists
/// the hosts.
const FORGET_HOST_MS: i64 = 60 * 60 * 1000;

/// A lease as stored.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    /// The host that holds it.
    holder: String,
    /// When it expires (the holder's wall clock plus the ttl).
    expires_ms: i64,
    /// Its epoch; 0 when the write that holds it gave it to the holder
    /// (the epoch is then [`take_epoch`] of that write's revision and
    /// `floor`).
    #[serde(default)]
    epoch: u64,
    /// What the epoch of a take must pass: the newest epoch the plugin's
    /// cursor record has fenced, or of the lease the take replaced; 0 when
    /// the take's revision passes it anyway.
    #[serde(default, skip_serializing_if = "is_zero")]
    floor: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The epoch of a take written at `revision` over `floor`: the revision
/// when it is above the floor (always, unless the bucket was made again),
/// else the floor plus the revision. Over one floor, a later take has a
/// higher epoch; and every take's epoch is above its floor.
fn take_epoch(revision: u64, floor: u64) -> u64 {
    if revision > floor {
        revision
    } else {
        floor.saturating_add(revision)
    }
}

/// A host's entry as stored.
#[derive(Debug, Serialize, Deserialize)]
struct HostRecord {
    /// When it expires.
    expires_ms: i64,
}

/// What a key holds now, and the revision to expect when writing it.
enum Found<T> {
    /// Nothing was ever written (expect revision 0).
    Absent,
    /// Deleted (a released lease, a host that stopped).
    Deleted(u64),
    /// A record, at this revision.
    Recorded(T, u64),
}

impl<T> Found<T> {
    fn revision(&self) -> u64 {
        match self {
            Self::Absent => 0,
            Self::Deleted(r) | Self::Recorded(_, r) => *r,
        }
    }
}

/// How a compare-and-set write ended.
enum Cas {
    /// Written, at this revision.
    Written(u64),
    /// Someone else wrote the key since it was read.
    Conflict,
}

/// Host ids name keys: 1 to 128 of `A-Z`, `a-z`, `0-9`, `-` and `_`.
fn valid_host(host: &str) -> bool {
    (1..=128).contains(&host.len())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Inner {
    fn check_host(&self, host: &str) -> Result<(), LogError> {
        if valid_host(host) {
            Ok(())
        } else {
            Err(self.error(
                "register the host",
                BackendError::HostId {
                    host: host.chars().take(64).collect(),
                },
            ))
        }
    }

    /// Reads `key` of `bucket` and parses its record.
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &Store,
        key: &str,
    ) -> Result<Found<T>, LogError> {
        let entry = bucket
            .entry(key)
            .await
            .map_err(|e| self.error(format!("read {key}"), e))?;
        Ok(match entry {
            None => Found::Absent,
            Some(entry) if entry.operation != Operation::Put => Found::Deleted(entry.revision),
            Some(entry) => {
                let record =
                    serde_json::from_slice(&entry.value).map_err(|e| self.corrupt(key, e))?;
                Found::Recorded(record, entry.revision)
            }
        })
    }

    /// Writes `record` at `key` if the key is still at `revision`.
    async fn cas<T: Serialize>(
        &self,
        bucket: &Store,
        key: &str,
        record: &T,
        revision: u64,
    ) -> Result<Cas, LogError> {
        let value =
            serde_json::to_vec(record).map_err(|e| self.error(format!("write {key}"), e))?;
        match bucket.update(key, value.into(), revision).await {
            Ok(written) => Ok(Cas::Written(written)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Cas::Conflict),
            Err(e) => Err(self.error(format!("write {key}"), e)),
        }
    }

    /// Deletes `key` if it is still at `revision`; false when it is not.
    async fn cas_delete(&self, bucket: &Store, key: &str, revision: u64) -> Result<bool, LogError> {
        match bucket.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(self.error(format!("delete {key}"), e)),
        }
    }

    /// The lease on `key` as recorded, with the revision to expect.
    async fn read_lease(&self, key: &str) -> Result<Found<LeaseState>, LogError> {
        Ok(
            match self.read::<LeaseRecord>(&self.buckets.leases, key).await? {
                Found::Recorded(record, revision) => Found::Recorded(
                    LeaseState {
                        holder: record.holder,
                        expires_ms: record.expires_ms,
                        epoch: if record.epoch == 0 {
                            take_epoch(revision, record.floor)
                        } else {
                            record.epoch
                        },
                    },
                    revision,
                ),
                Found::Deleted(r) => Found::Deleted(r),
                Found::Absent => Found::Absent,
            },
        )
    }

    /// What a refused take or renewal answers: the lease as it is now.
    async fn refused(&self, key: &str) -> Result<LeaseGrant, LogError> {
        let current = match self.read_lease(key).await? {
            Found::Recorded(state, _) => Some(state),
            _ => None,
        };
        Ok(LeaseGrant::Refused { current })
    }

    async fn acquire(
        &self,
        lease: &LeaseKey,
        holder: &str,
        terms: LeaseTerms,
    ) -> Result<LeaseGrant, LogError> {
        self.check_host(holder)?;
        let key = names::partition_key(&lease.tenant, &lease.plugin, lease.partition);
        let now = now_ms();
        let expires_ms = now.saturating_add(terms.ttl_ms());
        let found = self.read_lease(&key).await?;
        let revision = found.revision();
        // Held by the caller already (a take whose answer was lost, or a
        // consumer whose commit was refused): it is renewed under its epoch,
        // unless a commit has passed that epoch (see below).
        let (keep, replaced) = match found {
            Found::Recorded(state, _) if state.holder == holder => (Some(state.epoch), state.epoch),
            Found::Recorded(state, _) if !state.takeable(now, &terms) => {
                return Ok(LeaseGrant::Refused {
                    current: Some(state),
                });
            }
            Found::Recorded(state, _) => (None, state.epoch),
            _ => (None, 0),
        };
        // A take's epoch passes every epoch before it, even in a bucket
        // made again (see "Epochs" above); and a holder whose epoch a
        // commit has passed (only possible in a bucket made again) takes
        // the lease anew, above that commit, instead of keeping an epoch
        // whose every commit would be refused.
        let fenced =
            crate::progress::fenced_epoch(self, &lease.tenant, &lease.plugin, lease.partition)
                .await?;
        let keep = keep.filter(|epoch| *epoch >= fenced);
        let floor = match keep {
            Some(_) => 0,
            None => {
                let floor = fenced.max(replaced);
                if floor < revision { 0 } else { floor }
            }
        };
        let record = LeaseRecord {
            holder: holder.to_owned(),
            expires_ms,
            epoch: keep.unwrap_or(0),
            floor,
        };
        match self
            .cas(&self.buckets.leases, &key, &record, revision)
            .await?
        {
            Cas::Written(written) => Ok(LeaseGrant::Held {
                epoch: keep.unwrap_or_else(|| take_epoch(written, floor)),
                expires_ms,
            }),
            Cas::Conflict => self.refused(&key).await,
        }
    }

    async fn renew(
        &self,
        key: &str,
        holder: &str,
        epoch: u64,
        terms: LeaseTerms,
    ) -> Result<LeaseGrant, LogError> {
        let expires_ms = now_ms().saturating_add(terms.ttl_ms());
        match self.read_lease(key).await? {
            Found::Recorded(state, revision) if state.holder == holder && state.epoch == epoch => {
                let record = LeaseRecord {
                    holder: holder.to_owned(),
                    expires_ms,
                    epoch,
                    floor: 0,
                };
                match self
                    .cas(&self.buckets.leases, key, &record, revision)
                    .await?
                {
                    Cas::Written(_) => Ok(LeaseGrant::Held { epoch, expires_ms }),
                    Cas::Conflict => self.refused(key).await,
                }
            }
            Found::Recorded(state, _) => Ok(LeaseGrant::Refused {
                current: Some(state),
            }),
            _ => Ok(LeaseGrant::Refused { current: None }),
        }
    }

    async fn release(&self, key: &str, holder: &str, epoch: u64) -> Result<bool, LogError> {
        match self.read_lease(key).await? {
            Found::Recorded(state, revision) if state.holder == holder && state.epoch == epoch => {
                self.cas_delete(&self.buckets.leases, key, revision).await
            }
            _ => Ok(false),
        }
    }

    async fn register(&self, host: &str, terms: LeaseTerms) -> Result<(), LogError> {
        self.check_host(host)?;
        // A conflict on a host's own key is an earlier write of its own
        // whose answer was lost: read again and write again.
        for _ in 0..3 {
            let found = self.read::<HostRecord>(&self.buckets.hosts, host).await?;
            let record = HostRecord {
                expires_ms: now_ms().saturating_add(terms.ttl_ms()),
            };
            if let Cas::Written(_) = self
                .cas(&self.buckets.hosts, host, &record, found.revision())
                .await?
            {
                return Ok(());
            }
        }
        Err(self.error(
            format!("register the host {host}"),
            BackendError::HostIdInUse {
                host: host.to_owned(),
            },
        ))
    }

    async fn deregister(&self, host: &str) -> Result<(), LogError> {
        self.check_host(host)?;
        if let Found::Recorded(_, revision) =
            self.read::<HostRecord>(&self.buckets.hosts, host).await?
        {
            self.cas_delete(&self.buckets.hosts, host, revision).await?;
        }
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostEntry>, LogError> {
        let mut keys = self
            .buckets
            .hosts
            .keys()
            .await
            .map_err(|e| self.error("list the hosts", e))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            ids.push(key.map_err(|e| self.error("list the hosts", e))?);
        }
        let now = now_ms();
        let mut live = Vec::new();
        for host in ids {
            match self.read::<HostRecord>(&self.buckets.hosts, &host).await {
                Ok(Found::Recorded(record, revision)) => {
                    if now <= record.expires_ms {
                        live.push(HostEntry {
                            host,
                            expires_ms: record.expires_ms,
                        });
                    } else if now > record.expires_ms.saturating_add(FORGET_HOST_MS) {
                        // Long gone: tidy up (whoever gets there first).
                        let _ = self.cas_delete(&self.buckets.hosts, &host, revision).await;
                    }
                }
                Ok(_) => {}
                // One unreadable entry does not hide the others.
                Err(e) => tracing::warn!("cannot read a host's entry: {e}"),
            }
        }
        live.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(live)
    }
}

impl LeaseStore for NatsLog {
    fn shared(&self) -> bool {
        true
    }

    fn register(&self, host: &str, terms: LeaseTerms) -> Reply<()> {
        let (inner, host) = (self.inner.clone(), host.to_owned());
        self.inner.bridge.reply(async move {
            let result = inner.register(&host, terms).await;
            inner.note_write(&result);
            result
        })
    }

    fn deregister(&self, host: &str) -> Reply<()> {
        let (inner, host) = (self.inner.clone(), host.to_owned());
        self.inner
            .bridge
            .reply(async move { inner.deregister(&host).await })
    }

    fn hosts(&self) -> Result<Vec<HostEntry>, LogError> {
        let inner = self.inner.clone();
        self.inner.bridge.block(async move { inner.hosts().await })
    }

    fn lease(&self, key: &LeaseKey) -> Result<Option<LeaseState>, LogError> {
        let (inner, key) = (
            self.inner.clone(),
            names::partition_key(&key.tenant, &key.plugin, key.partition),
        );
        self.inner.bridge.block(async move {
            Ok(match inner.read_lease(&key).await? {
                Found::Recorded(state, _) => Some(state),
                _ => None,
            })
        })
    }

    fn acquire(&self, key: &LeaseKey, holder: &str, terms: LeaseTerms) -> Reply<LeaseGrant> {
        let (inner, key, holder) = (self.inner.clone(), key.clone(), holder.to_owned());
        self.inner.bridge.reply(async move {
            let result = inner.acquire(&key, &holder, terms).await;
            inner.note_write(&result);
            result
        })
    }

    fn renew(
        &self,
        key: &LeaseKey,
        holder: &str,
        epoch: u64,
        terms: LeaseTerms,
    ) -> Reply<LeaseGrant> {
        let (inner, key, holder) = (
            self.inner.clone(),
            names::partition_key(&key.tenant, &key.plugin, key.partition),
            holder.to_owned(),
        );
        self.inner.bridge.reply(async move {
            let result = inner.renew(&key, &holder, epoch, terms).await;
            inner.note_write(&result);
            result
        })
    }

    fn release(&self, key: &LeaseKey, holder: &str, epoch: u64) -> Reply<bool> {
        let (inner, key, holder) = (
            self.inner.clone(),
            names::partition_key(&key.tenant, &key.plugin, key.partition),
            holder.to_owned(),
        );
        self.inner.bridge.reply(async move {
            let result = inner.release(&key, &holder, epoch).await;
            inner.note_write(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_epochs_pass_their_floor_and_grow_over_it() {
        assert_eq!(take_epoch(7, 0), 7);
        assert_eq!(
            take_epoch(7, 6),
            7,
            "a revision above the floor is the epoch"
        );
        assert_eq!(take_epoch(3, 500), 503);
        assert!(take_epoch(4, 500) > take_epoch(3, 500));
        assert!(take_epoch(1, 503) > 503);
        assert_eq!(take_epoch(5, u64::MAX), u64::MAX);
    }

    #[test]
    fn host_ids_are_key_tokens() {
        assert!(valid_host("web-1_4242_3f9a"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"h".repeat(129)] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
