//! Which plugins this host delivers for, when several hosts share the log
//! ([`LeaseStore::shared`]): each (tenant, plugin, partition) is delivered
//! by the one host that holds its lease.
//!
//! One task, the keeper, registers the host and renews every lease it
//! holds each `ttl / 3`, and takes and hands back leases so that the work
//! spreads evenly: a (tenant, plugin) belongs on the live host that
//! rendezvous (highest-random-weight) hashing prefers ([`preferred`]). A
//! host takes at once a free or expired lease it is preferred for; one it
//! is not preferred for only once the lease has been free for
//! [`grace`] (its preferred host does not take it: it does not run that
//! plugin, or is gone); and it hands back, at its consumer's next commit
//! boundary, a lease that another live host is preferred for — unless
//! that host already let the lease lie free (it does not run the plugin).
//!
//! A consumer delivers and commits only while its lease is usable: held,
//! and short of `ttl - margin` since the keeper sent the renewal that
//! last succeeded ([`usable_until`]). A consumer whose lease is lost
//! drops what it read ahead and waits for the lease again; one that gets
//! it re-reads its cursor and first commits an empty commit under the new
//! epoch, so that the log refuses any later commit of the previous holder.
//!
//! On a log one process uses alone (SQLite, memory) there is no keeper:
//! every consumer holds its lease for ever, under no epoch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::state::{Inner, PartKey};
use plugbus_log::{LeaseGrant, LeaseKey, LeaseTerms, now_ms};

/// A consumer's lease, as the keeper (and the consumer) keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holding {
    /// Not held: the consumer waits.
    Waiting,
    /// Held: the consumer may deliver and commit until `until`.
    Held {
        /// The lease's epoch; `None` on a log without leases.
        epoch: Option<u64>,
        /// When it stops being usable; `None`: never.
        until: Option<Instant>,
        /// The keeper asks the consumer to give it back at its next
        /// commit boundary (another live host is preferred for it).
        hand_back: bool,
    },
    /// The consumer gave it back (handed back, or it stopped); the keeper
    /// releases it in the log.
    Yielded {
        /// Its epoch.
        epoch: u64,
    },
}

impl Holding {
    /// The epoch under which it may be used at `now`, if it may.
    pub(crate) fn usable(&self, now: Instant) -> Option<Option<u64>> {
        match self {
            Self::Held { epoch, until, .. } if until.is_none_or(|u| now < u) => Some(*epoch),
            _ => None,
        }
    }
}

/// When a lease whose renewal (or take) was sent at `sent` stops being
/// usable: `ttl - margin` later.
pub(crate) fn usable_until(sent: Instant, terms: &LeaseTerms) -> Instant {
    sent + terms.ttl.saturating_sub(terms.margin)
}

/// How often the keeper renews: a third of the ttl (at least 10 ms).
pub(crate) fn renew_period(terms: &LeaseTerms) -> Duration {
    (terms.ttl / 3).max(Duration::from_millis(10))
}

/// How long a lease this host is not preferred for must have been seen
/// free before it takes it: two renewal periods, in which its preferred
/// host, if it runs the plugin, would have taken it.
pub(crate) fn grace(terms: &LeaseTerms) -> Duration {
    renew_period(terms) * 2
}

/// The terms for a lease ttl: the margin is a quarter of it.
pub(crate) fn terms(ttl: Duration) -> LeaseTerms {
    LeaseTerms {
        ttl,
        margin: ttl / 4,
    }
}

/// A stable 64-bit hash (FNV-1a, then a finalizer), the same in every
/// build, so that every host computes the same preferences.
fn weight(host: &str, key: &LeaseKey) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // Partition 0 hashes as the whole tenant did before partitions, so
    // that a log of one partition spreads its plugins as it always did.
    let partition = (key.partition != 0).then(|| key.partition.to_string());
    for part in [host, &key.tenant, &key.plugin]
        .into_iter()
        .chain(partition.as_deref())
    {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // splitmix64's finalizer spreads FNV's weak low bits.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The host among `hosts` that rendezvous hashing prefers for `key`: the
/// one of highest weight (ties to the smaller id). Adding or removing a
/// host moves only the keys it gains or held.
pub(crate) fn preferred<'h>(key: &LeaseKey, hosts: &'h [String]) -> Option<&'h str> {
    hosts
        .iter()
        .map(|h| (weight(h, key), std::cmp::Reverse(h)))
        .max()
        .map(|(_, std::cmp::Reverse(h))| h.as_str())
}

/// The leases of this host's consumers.
pub(crate) struct Leases {
    /// This host's id.
    pub(crate) host: String,
    /// The ttl and margin.
    pub(crate) terms: LeaseTerms,
    /// Whether the log is shared (else every lease is held for ever).
    pub(crate) shared: bool,
    /// Each (plugin, partition)'s lease.
    slots: Mutex<HashMap<PartKey, watch::Sender<Holding>>>,
    /// Wakes the keeper (a consumer gave a lease back).
    pub(crate) wake: Notify,
    /// The bus is stopping: the keeper renews, and takes nothing more.
    closing: AtomicBool,
    /// Held by the keeper through each round.
    round: tokio::sync::Mutex<()>,
}

impl Leases {
    pub(crate) fn new(host: String, ttl: Duration, shared: bool) -> Self {
        Self {
            host,
            terms: terms(ttl),
            shared,
            slots: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// The lease of `key`, made when missing: held for ever on a log
    /// without leases, else waiting for the keeper.
    pub(crate) fn slot(&self, key: &PartKey) -> watch::Sender<Holding> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert_with(|| {
                watch::Sender::new(if self.shared {
                    Holding::Waiting
                } else {
                    Holding::Held {
                        epoch: None,
                        until: None,
                        hand_back: false,
                    }
                })
            })
            .clone()
    }

    /// Tells the keeper to take no more leases (the bus stops), and waits
    /// for its round under way (at most a renewal period): a lease it is
    /// taking is then in its slot, to be released with the rest.
    pub(crate) async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(renew_period(&self.terms), self.round.lock()).await;
    }

    /// Every lease, by plugin and partition.
    fn all(&self) -> Vec<(PartKey, watch::Sender<Holding>)> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// The (plugin, partition)s whose lease this host holds now, sorted.
    pub(crate) fn held(&self) -> Vec<PartKey> {
        let mut held: Vec<PartKey> = self
            .all()
            .into_iter()
            .filter(|(_, slot)| matches!(*slot.borrow(), Holding::Held { .. }))
            .map(|(key, _)| key)
            .collect();
        held.sort();
        held
    }

    /// Gives the lease of a consumer back (it stops, or hands it back):
    /// the keeper releases it.
    pub(crate) fn give_back(&self, slot: &watch::Sender<Holding>) {
        let gave = slot.send_if_modified(|h| match h {
            Holding::Held {
                epoch: Some(epoch), ..
            } => {
                *h = Holding::Yielded { epoch: *epoch };
                true
            }
            _ => false,
        });
        if gave {
            self.wake.notify_one();
        }
    }
}

/// Sets `slot` to `to` if it is still held under `epoch`.
fn replace_held(slot: &watch::Sender<Holding>, epoch: u64, to: Holding) {
    slot.send_if_modified(|h| match h {
        Holding::Held { epoch: Some(e), .. } if *e == epoch => {
            *h = to;
            true
        }
        _ => false,
    });
}

/// Marks the lease of `slot` lost when it is held under `epoch` (a commit
/// under it was refused).
pub(crate) fn lost(slot: &watch::Sender<Holding>, epoch: u64) {
    replace_held(slot, epoch, Holding::Waiting);
}

/// What the keeper remembers between its rounds.
#[derive(Default)]
struct Keeper {
    /// The live hosts last listed (this one among them).
    hosts: Vec<String>,
    /// Leases not held by anyone, since when this host sees them so.
    free_since: HashMap<PartKey, Instant>,
    /// Leases this host took although another host was preferred (which
    /// let them lie free): not handed back to that host.
    declined_by: HashMap<PartKey, String>,
}

/// The keeper: registers the host and keeps its leases, each renewal
/// period, and releases at once those its consumers give back. Runs until
/// aborted (the bus's shutdown, after [`Leases::close`]).
pub(crate) async fn keep(inner: Arc<Inner>) -> Result<(), String> {
    let leases = &inner.leases;
    let period = renew_period(&leases.terms);
    let mut keeper = Keeper::default();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            next = Instant::now() + period;
            let _round = leases.round.lock().await;
            keeper.round(&inner).await;
        }
        release_given_back(&inner).await;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = leases.wake.notified() => {}
        }
    }
}

/// Releases the leases consumers gave back.
async fn release_given_back(inner: &Inner) {
    let leases = &inner.leases;
    for ((tenant, plugin, partition), slot) in leases.all() {
        let Holding::Yielded { epoch } = *slot.borrow() else {
            continue;
        };
        let key = LeaseKey::of(&tenant, &plugin, partition);
        if let Err(e) = inner.log.release(&key, &leases.host, epoch).await {
            // It expires by itself.
            tracing::warn!(tenant = %tenant, plugin = %plugin, "cannot release the plugin's lease: {e}");
        }
        slot.send_if_modified(|h| {
            let was = *h == Holding::Yielded { epoch };
            if was {
                *h = Holding::Waiting;
            }
            was
        });
    }
}

/// How many lease requests (renewals, reads, takes) the keeper has in
/// flight at once: a host holds a lease per (tenant, plugin, partition),
/// thousands of them, and one request after another would make a round
/// last longer than the renewal period.
const IN_FLIGHT: usize = 64;

/// What a renewal answered: the log's answer, or nothing within the
/// renewal period.
type Renewal = Result<Result<LeaseGrant, plugbus_log::LogError>, tokio::time::error::Elapsed>;

/// A lease this host waits for, as a round found it.
struct Candidate {
    plugin: PartKey,
    key: LeaseKey,
    slot: watch::Sender<Holding>,
    /// This host is the preferred one for it.
    mine: bool,
    /// Not preferred: the lease as read from the log.
    found: Option<Result<Option<plugbus_log::LeaseState>, plugbus_log::LogError>>,
}

impl Keeper {
    /// One round: register, list the hosts, renew what is held, hand back
    /// what another host is preferred for, and take what is free. Each
    /// step's requests go out at once ([`IN_FLIGHT`] at a time), and a
    /// renewal that does not answer within the renewal period counts as
    /// not renewed, so that one slow request does not hold up the rest.
    async fn round(&mut self, inner: &Arc<Inner>) {
        let leases = &inner.leases;
        let (me, terms) = (leases.host.as_str(), leases.terms);
        if let Err(e) = inner.log.register(me, terms).await {
            tracing::warn!("cannot renew this host's entry in the registry: {e}");
        }
        match plugbus_log::blocking(&inner.log, |log| log.hosts()).await {
            Ok(hosts) => self.hosts = hosts.into_iter().map(|h| h.host).collect(),
            Err(e) => tracing::warn!("cannot list the live hosts: {e}"),
        }
        if !self.hosts.iter().any(|h| h == me) {
            self.hosts.push(me.to_owned());
            self.hosts.sort();
        }
        let loaded: HashSet<PartKey> = inner
            .host
            .plugins()
            .into_iter()
            .flat_map(|p| (0..inner.partitions).map(move |n| (p.tenant.clone(), p.name.clone(), n)))
            .collect();
        for key in &loaded {
            leases.slot(key);
        }
        let mut renewals = Vec::new();
        let mut waiting = Vec::new();
        for (plugin, slot) in leases.all() {
            let state = slot.borrow().clone();
            match state {
                Holding::Held {
                    epoch: Some(epoch), ..
                } => {
                    if loaded.contains(&plugin) {
                        renewals.push((plugin, slot, epoch));
                    } else {
                        // Unloaded: its consumer is gone.
                        leases.give_back(&slot);
                    }
                }
                Holding::Waiting if loaded.contains(&plugin) => waiting.push((plugin, slot)),
                _ => {}
            }
        }
        let period = renew_period(&terms);
        let renewed: Vec<_> = futures::stream::iter(renewals)
            .map(|(plugin, slot, epoch)| async move {
                let key = LeaseKey::of(&plugin.0, &plugin.1, plugin.2);
                let sent = Instant::now();
                let answer = tokio::time::timeout(
                    period,
                    inner.log.renew(&key, me, epoch, terms).into_future(),
                )
                .await;
                (plugin, key, slot, epoch, sent, answer)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut held = 0u64;
        for (plugin, key, slot, epoch, sent, answer) in renewed {
            if self.renewed(inner, &plugin, &key, &slot, epoch, sent, answer) {
                held += 1;
            }
        }
        if !leases.closing.load(Ordering::SeqCst) {
            held += self.take_free(inner, waiting).await;
        }
        metrics::gauge!("plugbus_leases_held").set(held as f64);
    }

    /// Settles a held lease's renewal; true when it is still held.
    #[allow(clippy::too_many_arguments)]
    fn renewed(
        &mut self,
        inner: &Inner,
        plugin: &PartKey,
        key: &LeaseKey,
        slot: &watch::Sender<Holding>,
        epoch: u64,
        sent: Instant,
        answer: Renewal,
    ) -> bool {
        let leases = &inner.leases;
        match answer {
            Ok(Ok(LeaseGrant::Held { .. })) => {
                let hand_back = self.hand_back(plugin, key, &leases.host);
                replace_held(
                    slot,
                    epoch,
                    Holding::Held {
                        epoch: Some(epoch),
                        until: Some(usable_until(sent, &leases.terms)),
                        hand_back,
                    },
                );
                true
            }
            Ok(Ok(LeaseGrant::Refused { current })) => {
                tracing::warn!(
                    tenant = %plugin.0,
                    plugin = %plugin.1,
                    partition = plugin.2,
                    holder = %current.map(|c| c.holder).unwrap_or_default().escape_debug(),
                    "the plugin's lease was lost; its consumer stops"
                );
                lost(slot, epoch);
                self.declined_by.remove(plugin);
                false
            }
            Ok(Err(e)) => {
                // Not renewed: usable until the last renewal's bound.
                tracing::warn!(tenant = %plugin.0, plugin = %plugin.1, partition = plugin.2, "cannot renew the plugin's lease: {e}");
                true
            }
            Err(_) => {
                tracing::warn!(tenant = %plugin.0, plugin = %plugin.1, partition = plugin.2, "cannot renew the plugin's lease: no answer within the renewal period");
                true
            }
        }
    }

    /// Whether a held lease is to be handed back: another live host is
    /// preferred for it, and did not let it lie free before.
    fn hand_back(&self, plugin: &PartKey, key: &LeaseKey, me: &str) -> bool {
        match preferred(key, &self.hosts) {
            Some(other) if other != me => {
                self.declined_by.get(plugin).map(String::as_str) != Some(other)
            }
            _ => false,
        }
    }

    /// Takes the waiting leases this host is preferred for, and those that
    /// have lain free for the grace: reads the others' state at once,
    /// decides, then takes at once. Answers how many it holds now.
    async fn take_free(
        &mut self,
        inner: &Inner,
        waiting: Vec<(PartKey, watch::Sender<Holding>)>,
    ) -> u64 {
        let leases = &inner.leases;
        let (me, terms) = (leases.host.as_str(), leases.terms);
        let hosts = &self.hosts;
        let candidates: Vec<Candidate> = futures::stream::iter(waiting)
            .map(|(plugin, slot)| async move {
                let key = LeaseKey::of(&plugin.0, &plugin.1, plugin.2);
                let mine = preferred(&key, hosts) == Some(me);
                let found = if mine {
                    None
                } else {
                    let lookup = key.clone();
                    Some(plugbus_log::blocking(&inner.log, move |log| log.lease(&lookup)).await)
                };
                Candidate {
                    plugin,
                    key,
                    slot,
                    mine,
                    found,
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let now = Instant::now();
        let mut takes = Vec::new();
        for candidate in candidates {
            if candidate.mine || self.may_take_other(&candidate, me, now, &terms) {
                takes.push(candidate);
            }
        }
        let taken: Vec<_> = futures::stream::iter(takes)
            .map(|candidate| async move {
                let sent = Instant::now();
                let answer = inner.log.acquire(&candidate.key, me, terms).await;
                (candidate, sent, answer)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut held = 0;
        for (candidate, sent, answer) in taken {
            if self.took(&candidate, sent, answer, &terms) {
                held += 1;
            }
        }
        held
    }

    /// Whether this host takes a lease another host is preferred for: its
    /// own from before (a keeper restarted), or one seen free for the
    /// grace.
    fn may_take_other(
        &mut self,
        candidate: &Candidate,
        me: &str,
        now: Instant,
        terms: &LeaseTerms,
    ) -> bool {
        let plugin = &candidate.plugin;
        match &candidate.found {
            // Not read (this host is preferred: decided before).
            None => false,
            // Its own (a keeper restarted): taken again under its epoch.
            Some(Ok(Some(state))) if state.holder == me => true,
            Some(Ok(Some(state))) if !state.takeable(now_ms(), terms) => {
                self.free_since.remove(plugin);
                false
            }
            Some(Ok(_)) => {
                let since = *self.free_since.entry(plugin.clone()).or_insert(now);
                may_take(false, Some(since), now, grace(terms))
            }
            Some(Err(e)) => {
                tracing::warn!(tenant = %plugin.0, plugin = %plugin.1, partition = plugin.2, "cannot read the plugin's lease: {e}");
                false
            }
        }
    }

    /// Settles a take; true when this host holds the lease now.
    fn took(
        &mut self,
        candidate: &Candidate,
        sent: Instant,
        answer: Result<LeaseGrant, plugbus_log::LogError>,
        terms: &LeaseTerms,
    ) -> bool {
        let plugin = &candidate.plugin;
        match answer {
            Ok(LeaseGrant::Held { epoch, .. }) => {
                self.free_since.remove(plugin);
                if candidate.mine {
                    self.declined_by.remove(plugin);
                } else if let Some(other) = preferred(&candidate.key, &self.hosts) {
                    self.declined_by.insert(plugin.clone(), other.to_owned());
                }
                tracing::info!(tenant = %plugin.0, plugin = %plugin.1, partition = plugin.2, epoch, "took the plugin's lease");
                candidate.slot.send_replace(Holding::Held {
                    epoch: Some(epoch),
                    until: Some(usable_until(sent, terms)),
                    hand_back: false,
                });
                true
            }
            Ok(LeaseGrant::Refused { .. }) => {
                self.free_since.remove(plugin);
                false
            }
            Err(e) => {
                tracing::warn!(tenant = %plugin.0, plugin = %plugin.1, partition = plugin.2, "cannot take the plugin's lease: {e}");
                false
            }
        }
    }
}

/// Whether the keeper takes a free lease: at once when this host is
/// preferred for it, else once it has been seen free (`free_since`) for
/// `grace`.
pub(crate) fn may_take(
    preferred: bool,
    free_since: Option<Instant>,
    now: Instant,
    grace: Duration,
) -> bool {
    preferred || free_since.is_some_and(|since| now.saturating_duration_since(since) >= grace)
}

/// On shutdown, after the consumers' last commits: leaves the registry,
/// then releases every lease, so that the other hosts take them at their
/// next round.
pub(crate) async fn release_all(inner: &Inner) {
    let leases = &inner.leases;
    if !leases.shared {
        return;
    }
    if let Err(e) = inner.log.deregister(&leases.host).await {
        tracing::warn!("cannot leave the host registry: {e}");
    }
    for ((tenant, plugin, partition), slot) in leases.all() {
        let epoch = match *slot.borrow() {
            Holding::Held {
                epoch: Some(epoch), ..
            }
            | Holding::Yielded { epoch } => epoch,
            _ => continue,
        };
        let key = LeaseKey::of(&tenant, &plugin, partition);
        if let Err(e) = inner.log.release(&key, &leases.host, epoch).await {
            tracing::warn!(tenant = %tenant, plugin = %plugin, partition, "cannot release the plugin's lease: {e}");
        }
        slot.send_replace(Holding::Waiting);
    }
}

/// The default host id: the host name, the process id and a random
/// suffix, in the characters a shared log accepts (`A-Z a-z 0-9 - _`).
pub(crate) fn default_host_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = if name.is_empty() {
        "host".to_owned()
    } else {
        name
    };
    process_host_id(&format!("{name}_{}", std::process::id()))
}

/// `name` with a random suffix of this process (`<name>_<8 hex digits>`),
/// so that two processes given the same name (a copied configuration, a
/// restart that overlaps its predecessor) are still two holders and never
/// share a lease's epoch. The suffix adds 9 characters.
pub fn process_host_id(name: &str) -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    // The last 8 hex digits of a v7 uuid are random.
    let suffix = &random[random.len() - 8..];
    format!("{name}_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}")).collect()
    }

    #[test]
    fn every_host_computes_the_same_preference() {
        let key = LeaseKey::new("shop", "audit");
        let mut shuffled = hosts(3);
        shuffled.reverse();
        assert_eq!(preferred(&key, &hosts(3)), preferred(&key, &shuffled));
        assert_eq!(preferred(&key, &[]), None);
        assert_eq!(preferred(&key, &hosts(1)), Some("host-0"));
        // Fixed across builds: a known answer.
        assert_eq!(weight("host-0", &key), weight("host-0", &key.clone()));
        assert_ne!(weight("host-0", &key), weight("host-1", &key));
        assert_ne!(
            weight("ab", &LeaseKey::new("c", "d")),
            weight("a", &LeaseKey::new("bc", "d"))
        );
        // Partitions of one plugin spread over the hosts too.
        let three = hosts(3);
        let spread: std::collections::BTreeSet<&str> = (0..16)
            .filter_map(|n| preferred(&LeaseKey::of("shop", "audit", n), &three))
            .collect();
        assert_eq!(spread.len(), 3, "{spread:?}");
    }

    #[test]
    fn work_spreads_evenly_and_moves_only_from_a_host_that_leaves() {
        let keys: Vec<LeaseKey> = (0..3000)
            .map(|i| LeaseKey::new(&format!("t{}", i % 100), &format!("p{i}")))
            .collect();
        let three = hosts(3);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for key in &keys {
            *counts
                .entry(preferred(key, &three).expect("a host"))
                .or_default() += 1;
        }
        for host in &three {
            let n = counts[host.as_str()];
            assert!((800..=1200).contains(&n), "{host}: {n} of 3000");
        }
        // host-2 leaves: only its keys move, spread over the other two.
        let two = hosts(2);
        let mut moved: HashMap<&str, usize> = HashMap::new();
        for key in &keys {
            let before = preferred(key, &three).expect("a host");
            let after = preferred(key, &two).expect("a host");
            if before != "host-2" {
                assert_eq!(before, after, "{key} moved needlessly");
            } else {
                *moved.entry(after).or_default() += 1;
            }
        }
        assert!(moved.values().all(|n| *n > 300), "{moved:?}");
    }

    #[test]
    fn a_lease_is_usable_until_the_margin_before_its_expiry() {
        let terms = terms(Duration::from_secs(10));
        assert_eq!(terms.margin, Duration::from_millis(2500));
        let sent = Instant::now();
        let until = usable_until(sent, &terms);
        assert_eq!(until - sent, Duration::from_millis(7500));
        let held = Holding::Held {
            epoch: Some(7),
            until: Some(until),
            hand_back: false,
        };
        assert_eq!(held.usable(sent), Some(Some(7)));
        assert_eq!(held.usable(until - Duration::from_millis(1)), Some(Some(7)));
        assert_eq!(held.usable(until), None);
        assert_eq!(Holding::Waiting.usable(sent), None);
        assert_eq!(Holding::Yielded { epoch: 7 }.usable(sent), None);
        let forever = Holding::Held {
            epoch: None,
            until: None,
            hand_back: false,
        };
        assert_eq!(
            forever.usable(sent + Duration::from_secs(1 << 30)),
            Some(None)
        );
        // A renewal period fits twice before a missed renewal matters.
        assert!(renew_period(&terms) * 2 < terms.ttl - terms.margin);
    }

    #[test]
    fn another_hosts_lease_is_taken_only_after_the_grace() {
        let terms = terms(Duration::from_secs(9));
        let grace = grace(&terms);
        assert_eq!(grace, Duration::from_secs(6));
        let now = Instant::now();
        assert!(may_take(true, None, now, grace));
        assert!(!may_take(false, None, now, grace));
        assert!(!may_take(false, Some(now), now, grace));
        assert!(!may_take(
            false,
            Some(now),
            now + grace - Duration::from_millis(1),
            grace
        ));
        assert!(may_take(false, Some(now), now + grace, grace));
    }

    #[test]
    fn an_expired_lease_is_takeable_only_past_the_margin() {
        let terms = terms(Duration::from_secs(10));
        let state = plugbus_log::LeaseState {
            holder: "a".into(),
            expires_ms: 1_000_000,
            epoch: 3,
        };
        assert!(!state.takeable(1_000_000, &terms));
        assert!(!state.takeable(1_002_500, &terms));
        assert!(state.takeable(1_002_501, &terms));
    }

    #[test]
    fn the_default_host_id_is_a_key_token_and_unique() {
        let (a, b) = (default_host_id(), default_host_id());
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
        assert!(a.contains(&std::process::id().to_string()));
    }
}
