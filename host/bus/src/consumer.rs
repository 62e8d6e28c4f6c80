//! A plugin's consumer: it reads its tenant's events after its cursor,
//! delivers the ones it subscribes to in per-key order (through the one
//! delivery path it shares with redrive), retries or dead-letters the
//! failed ones, commits its progress, and quarantines a plugin that keeps
//! failing. Each round of [`Consumer::run`] reads top-down in
//! [`Consumer::round`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::lease::{self, Holding};
use crate::read_ahead::ReadAhead;
use crate::retry::{MAX_WAIT, deadline};
use crate::state::{Appends, Gauges, Inner, PartKey, PluginKey};
use crate::task::join_failure;
use plugbus_core::Outcome;
use plugbus_core::event::Event;
use plugbus_log::{
    Commit, DeadLetter, EventLog, FailedAttempt, LogError, Partition, Quarantine, QuarantineChange,
    ReadLimit, Seq, StoredEvent, now_ms, partition_of,
};
use plugbus_runtime::Delivery;
use plugbus_runtime::dispatch::{Effects, Item};

/// How a step of a consumer's round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Go on with the round.
    Go,
    /// Start the next round.
    Again,
    /// The bus stops, or the plugin was unloaded.
    Stop,
}

/// What a consumer keeps from one round to the next.
struct Run {
    /// The events read past the cursor.
    line: ReadAhead,
    /// Failed deliveries in a row, of any events.
    failures_in_a_row: u32,
    /// When the log was last asked for redrive requests.
    redrives_checked: Option<std::time::Instant>,
    /// When the log was last asked for a cursor moved by an operator.
    cursor_checked: std::time::Instant,
    /// The commit handed to the log and not answered yet.
    in_flight: Option<InFlight>,
    /// When the log was last asked whether another partition's consumer
    /// quarantined the plugin (only with several partitions).
    quarantine_checked: Option<std::time::Instant>,
}

/// What becomes of an event after a delivery.
enum Verdict {
    /// Handled: what it left behind is committed.
    Handled(Effects),
    /// Failed, to be tried again after the wait, with every attempt so far.
    Retry(Vec<FailedAttempt>, Duration),
    /// Given up: a dead letter with every attempt.
    Dead(Vec<FailedAttempt>),
}

/// Something delivered through [`deliver_now`]: an event read from
/// the log, or a dead letter redriven.
trait Deliverable: Send + Sync + 'static {
    /// The event to deliver.
    fn event(&self) -> &Event;
}

impl Deliverable for StoredEvent {
    fn event(&self) -> &Event {
        &self.event
    }
}

impl Deliverable for DeadLetter {
    fn event(&self) -> &Event {
        &self.event
    }
}

/// Whether a read of at most `limit` events of `partition` after
/// `after`, which returned `events`, reached the end of the partition's
/// events (one index lookup when it returned fewer than asked for).
fn at_the_end(
    log: &dyn EventLog,
    (tenant, partition): (&str, Partition),
    after: Seq,
    limit: ReadLimit,
    events: &[StoredEvent],
) -> Result<bool, LogError> {
    let more = match events.last() {
        Some(last) if events.len() < limit.events => {
            log.count_partition_after(tenant, partition, last.seq, 1)?
        }
        Some(_) => 1,
        None if limit.first_always => 0,
        None => log.count_partition_after(tenant, partition, after, 1)?,
    };
    Ok(more == 0)
}

/// How a round reads: at most `limit`, with the tenant's appends through
/// the bus counted before the read (see [`ReadAhead::read_done`]).
#[derive(Debug, Clone, Copy)]
struct ReadPlan {
    limit: ReadLimit,
    appended: u64,
}

/// The events a round delivered, each with its attempt number, and what
/// came of each (in order, stopping at the first failure).
type Delivered = (Vec<(Arc<StoredEvent>, u32)>, Vec<(Delivery, Effects)>);

/// Reads the events of `(tenant, partition)` after what `line` read, as
/// `plan` says, into `line` (the events `plugin` does not subscribe to
/// are finished at once). Answers how many events were read and whether
/// the read reached the end of the partition. Blocking.
fn read_into(
    inner: &Inner,
    (tenant, partition): (&str, Partition),
    plugin: &plugbus_runtime::Plugin,
    line: &mut ReadAhead,
    plan: ReadPlan,
    began: tokio::time::Instant,
) -> Result<(u64, bool), LogError> {
    let log = inner.log.as_ref();
    let after = line.read_after();
    let events = log.read_partition(tenant, partition, after, plan.limit)?;
    let at_the_end = at_the_end(log, (tenant, partition), after, plan.limit, &events)?;
    let read = events.len() as u64;
    line.take(events, |ty| plugin.manifest().subscribes_to(ty));
    line.read_done(plan.appended, began, at_the_end);
    Ok((read, at_the_end))
}

/// Delivers `batch` (each event with its attempt number and its share of
/// its chain's budget) to `plugin`, stopping at the first failure: the
/// one delivery path of events read from the log and of dead letters
/// redriven alike. Blocking.
fn deliver_now<T: Deliverable>(
    inner: &Inner,
    plugin: &plugbus_runtime::Plugin,
    batch: &[(Arc<T>, u32)],
) -> Vec<(Delivery, Effects)> {
    let items: Vec<_> = batch
        .iter()
        .map(|(e, attempt)| Item {
            event: e.event(),
            chain_budget: Some(Arc::new(AtomicUsize::new(budget(inner, e.event())))),
            attempt: *attempt,
        })
        .collect();
    plugin.deliver_batch_in_chain(items, true)
}

/// The budget of events a delivery of `event` may cause: the event's
/// chain budget (the host's limit when it carries none), shared among
/// the tenant's loaded plugins that subscribe to its type.
fn budget(inner: &Inner, event: &Event) -> usize {
    let limit = inner.host.config().max_events_per_chain;
    let subscribers = inner.host.subscribers(event.tenant(), event.ty());
    budget_share(event.chain_budget(limit), subscribers)
}

/// How many commits a consumer hands to the log before the first is
/// answered: one. While it is being made durable (the writer's group
/// fsync), the consumer reads and delivers the next due events; their
/// commit is handed over once the previous one has landed, and dropped
/// (the line starting again at the last durable cursor, its events
/// delivered again) if the previous one failed. A second commit in
/// flight is not safe on the embedded log: a commit whose group failed
/// does not stop a later group, and a commit whose expected cursor is not
/// the stored one still stores its state and events
/// ([`Commit::expected`]), so a later commit could keep the effects of
/// deliveries that read state the failed one never stored. A commit that
/// writes state is also waited for before the next delivery, which
/// must read it: a plugin that touched state is not pipelined.
const IN_FLIGHT: usize = 1;

/// A commit handed to the log and not answered yet.
struct InFlight {
    /// Its answer.
    answer:
        std::pin::Pin<Box<dyn Future<Output = Result<plugbus_log::Committed, LogError>> + Send>>,
    /// The cursor it moves to.
    cursor: Seq,
    /// How many of the events the line finished since its last commit it
    /// records (the first ones).
    finished: usize,
    /// The tenant and partition of each event it emits.
    emitted: Vec<(String, Partition)>,
}

/// The answer of the commit in `in_flight`; never, without one.
async fn answer_of(in_flight: &mut Option<InFlight>) -> Result<plugbus_log::Committed, LogError> {
    match in_flight {
        Some(flight) => (&mut flight.answer).await,
        None => std::future::pending().await,
    }
}

/// How many events of each (tenant, partition) `emitted` holds.
fn count_by_partition(emitted: &[(String, Partition)]) -> HashMap<(&str, Partition), u64> {
    let mut count: HashMap<(&str, Partition), u64> = HashMap::new();
    for (tenant, partition) in emitted {
        *count.entry((tenant, *partition)).or_default() += 1;
    }
    count
}

/// Where a consumer stands with its lease, at a commit boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseNow {
    /// Held and usable: deliver.
    Use,
    /// Held, but another live host is preferred for it: give it back.
    HandBack,
    /// Lost, released, or not renewed in time: stop delivering.
    Gone,
}

/// How taking up a lease ended.
enum Fence {
    /// Fenced: deliver from this position.
    Ready(Seq),
    /// Lost again, or the log failed: wait for the lease again.
    Retry,
    /// The bus stops.
    Stop,
}

pub(super) struct Consumer {
    inner: Arc<Inner>,
    tenant: String,
    plugin: String,
    /// The partition of the tenant's events it delivers.
    partition: Partition,
    gauges: Arc<Gauges>,
    /// The plugin's lease.
    lease: watch::Sender<Holding>,
    /// The epoch of the lease the consumer delivers under (0: none).
    epoch: AtomicU64,
}

/// How long a stopping consumer waits for the answer to its last commit.
const STOP_LANDING: Duration = Duration::from_secs(30);

impl Consumer {
    pub(super) fn new(inner: &Arc<Inner>, key: &PartKey, gauges: Arc<Gauges>) -> Self {
        Self {
            inner: inner.clone(),
            tenant: key.0.clone(),
            plugin: key.1.clone(),
            partition: key.2,
            gauges,
            lease: inner.leases.slot(key),
            epoch: AtomicU64::new(0),
        }
    }

    /// Delivers from `position`, or from the plugin's start position, until
    /// the bus stops or the plugin is unloaded (`Ok`); an `Err` says why it
    /// could not go on, and its supervisor restarts it from its cursor.
    pub(super) async fn run(self, position: Option<Seq>) -> Result<(), String> {
        let result = self.deliver_from(position).await;
        if matches!(result, Ok(())) && self.inner.host.plugin(&self.tenant, &self.plugin).is_none()
        {
            // Unloaded: its cursor stays for when it comes back.
            let key = (self.tenant.clone(), self.plugin.clone(), self.partition);
            self.inner.drop_gauges(&key, &self.gauges);
        }
        result
    }

    /// A fresh line at `position`, with what was finished ahead of it, and
    /// the count of events after it (at most 1,000,000 counted, once).
    async fn line_at(&self, position: Seq) -> Result<ReadAhead, String> {
        let mut line = ReadAhead::new(position);
        if let Err(e) = self.load_ahead(&mut line).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
        }
        let log = self.inner.log.clone();
        let (tenant, partition) = (self.tenant.clone(), self.partition);
        match tokio::task::spawn_blocking(move || {
            log.count_partition_after(&tenant, partition, position, 1_000_000)
        })
        .await
        {
            Ok(Ok(unread)) => self.gauges.unread.store(unread, Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot count the plugin's lag: {e}");
            }
            Err(e) => return Err(format!("counting its lag {}", join_failure(e))),
        }
        self.gauges.show(&line);
        Ok(line)
    }

    /// The consumer's loop: `Ok` when the bus stops or the plugin is
    /// unloaded. It delivers while it holds the plugin's lease (always, on
    /// a log one host has alone); one that loses it drops what it read
    /// ahead and waits for it again.
    async fn deliver_from(&self, position: Option<Seq>) -> Result<(), String> {
        let mut stop = self.inner.stop.subscribe();
        let appends = self.inner.appends(&self.tenant);
        let mut given = position;
        loop {
            let Some(epoch) = self.wait_for_lease(&mut stop).await else {
                return Ok(());
            };
            self.epoch.store(epoch.unwrap_or(0), Ordering::Relaxed);
            let position = match epoch {
                // Taken from another host, or again: from the cursor as
                // stored now, fenced.
                Some(epoch) => match self.fence(epoch, &mut stop).await {
                    Fence::Ready(position) => position,
                    Fence::Retry => continue,
                    Fence::Stop => return Ok(()),
                },
                None => match self.first_position(given.take(), &mut stop).await {
                    Some(position) => position,
                    None => return Ok(()),
                },
            };
            let mut run = Run {
                line: self.line_at(position).await?,
                failures_in_a_row: 0,
                redrives_checked: None,
                cursor_checked: std::time::Instant::now(),
                in_flight: None,
                quarantine_checked: None,
            };
            loop {
                match self.lease_now(epoch) {
                    LeaseNow::Use => {}
                    LeaseNow::HandBack => {
                        tracing::info!(tenant = %self.tenant, plugin = %self.plugin, "handing the plugin's lease to the host it belongs on");
                        self.land(&mut run.line, &mut run.in_flight).await;
                        self.inner.leases.give_back(&self.lease);
                        break;
                    }
                    LeaseNow::Gone => {
                        tracing::info!(tenant = %self.tenant, plugin = %self.plugin, "the plugin's lease is not renewed; its consumer waits");
                        self.land(&mut run.line, &mut run.in_flight).await;
                        break;
                    }
                }
                let step = self.round(&mut run, &appends, &mut stop).await;
                if !matches!(step, Ok(Step::Go | Step::Again)) {
                    // What was handed to the log lands before the consumer
                    // ends, or restarts from the cursor as stored. Bounded:
                    // a log that never answers must not hold the bus's
                    // stop (the commit was sent; if it lands, the cursor
                    // has moved, else its events are delivered again).
                    let landing = self.land(&mut run.line, &mut run.in_flight);
                    if tokio::time::timeout(STOP_LANDING, landing).await.is_err() {
                        tracing::warn!(tenant = %self.tenant, plugin = %self.plugin, "the log did not answer the consumer's last commit within {} s; it stops without the answer", STOP_LANDING.as_secs());
                    }
                    step?;
                    return Ok(());
                }
            }
            // What was read ahead is dropped: the next holder reads it.
            self.gauges
                .unread
                .fetch_add(run.line.behind() as u64, Ordering::Relaxed);
            self.gauges.show(&ReadAhead::new(run.line.position()));
        }
    }

    /// Where the consumer stands with its lease under `epoch`, now.
    fn lease_now(&self, epoch: Option<u64>) -> LeaseNow {
        let now = tokio::time::Instant::now();
        match &*self.lease.borrow() {
            held @ Holding::Held { hand_back, .. } if held.usable(now) == Some(epoch) => {
                if *hand_back {
                    LeaseNow::HandBack
                } else {
                    LeaseNow::Use
                }
            }
            _ => LeaseNow::Gone,
        }
    }

    /// Whether the consumer may commit now: its lease is usable.
    fn may_commit(&self) -> bool {
        let epoch = self.current_epoch();
        self.lease_now(epoch) != LeaseNow::Gone
    }

    /// The epoch the consumer delivers under.
    fn current_epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Relaxed)).filter(|e| *e != 0)
    }

    /// Waits until the plugin's lease is usable and answers its epoch
    /// (`None` inside: a log without leases); `None` when the bus stops or
    /// the plugin is unloaded meanwhile. A lease to be handed back is
    /// given back at once.
    async fn wait_for_lease(&self, stop: &mut watch::Receiver<bool>) -> Option<Option<u64>> {
        let mut changes = self.lease.subscribe();
        loop {
            if *stop.borrow() || self.inner.host.plugin(&self.tenant, &self.plugin).is_none() {
                return None;
            }
            let holding = changes.borrow_and_update().clone();
            if let Some(epoch) = holding.usable(tokio::time::Instant::now()) {
                if matches!(
                    holding,
                    Holding::Held {
                        hand_back: true,
                        ..
                    }
                ) {
                    self.inner.leases.give_back(&self.lease);
                } else {
                    return Some(epoch);
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return None,
            }
        }
    }

    /// Takes up the lease under `epoch`: reads the stored cursor (the
    /// start position for a plugin without one) and commits it unchanged
    /// under the epoch, so that the log refuses whatever the previous
    /// holder still tries to commit.
    async fn fence(&self, epoch: u64, stop: &mut watch::Receiver<bool>) -> Fence {
        let position = match self.start_position().await {
            Ok(position) => position,
            Err(e) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the plugin's cursor: {e}");
                return self.pause_fence(stop).await;
            }
        };
        let mut commit = self.commit_from(position);
        commit.lease = Some(epoch);
        match self.inner.log.commit(commit).await {
            Ok(committed) if committed.cursor_moved => {
                tracing::info!(tenant = %self.tenant, plugin = %self.plugin, epoch, position, "delivering under the plugin's lease");
                Fence::Ready(position)
            }
            // Moved meanwhile: read it again.
            Ok(_) => Fence::Retry,
            Err(LogError::LeaseLost { .. }) => {
                lease::lost(&self.lease, epoch);
                Fence::Retry
            }
            Err(e) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit under the plugin's lease: {e}");
                self.pause_fence(stop).await
            }
        }
    }

    /// Waits a second after a failure to take up the lease.
    async fn pause_fence(&self, stop: &mut watch::Receiver<bool>) -> Fence {
        if self.pause(Duration::from_secs(1), stop).await {
            Fence::Stop
        } else {
            Fence::Retry
        }
    }

    /// `position`, else the plugin's start position, asked of the log
    /// again each second while it cannot be read; `None` when the bus
    /// stops meanwhile.
    async fn first_position(
        &self,
        position: Option<Seq>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Seq> {
        if position.is_some() {
            return position;
        }
        loop {
            match self.start_position().await {
                Ok(position) => return Some(position),
                Err(e) => {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the plugin's cursor: {e}");
                    if self.pause(Duration::from_secs(1), stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One round of the consumer: follow a cursor an operator moved,
    /// redrive the dead letters asked for, read new events, then deliver
    /// the due ones (or commit what is finished, or wait).
    async fn round(
        &self,
        run: &mut Run,
        appends: &Appends,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        self.gauges.show(&run.line);
        if *stop.borrow() {
            return Ok(Step::Stop);
        }
        // Registered before reading, so an append between the read and
        // the wait is not missed.
        let appended = appends.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let Some(plugin) = self.inner.host.plugin(&self.tenant, &self.plugin) else {
            return Ok(Step::Stop);
        };
        self.follow_moved_cursor(run).await?;
        // A commit landed there may have found the lease gone (another
        // host took the plugin): deliver nothing more under it.
        if !self.may_commit() {
            return Ok(Step::Again);
        }
        if self.quarantined_elsewhere(run).await {
            return Ok(self.pause_step(Duration::from_millis(200), stop).await);
        }
        if let step @ (Step::Again | Step::Stop) =
            self.redrive_requested(&plugin, run, stop).await?
        {
            return Ok(step);
        }
        let now = tokio::time::Instant::now();
        let (due, reports) = match self.read_plan(&run.line, appends, now) {
            // Nothing to read: the due events (if any) go in one hop.
            None => {
                let due = run.line.due(now, self.inner.config.read_batch);
                if due.is_empty() {
                    return self.idle(run, appended, now, stop).await;
                }
                let reports = self.deliver(&plugin, &due, "delivering").await?;
                (due, reports)
            }
            // Read, then deliver what is due, in the same hop.
            Some(plan) => match self.read_and_deliver(&plugin, run, plan, now).await? {
                Ok(delivered) => delivered,
                Err(e) => {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the log: {e}");
                    return Ok(self.pause_step(Duration::from_secs(1), stop).await);
                }
            },
        };
        self.gauges.show(&run.line);
        if due.is_empty() {
            return self.idle(run, appended, now, stop).await;
        }
        self.inner.delivered(&reports);
        self.settle_due(&plugin, run, due, reports, stop).await
    }

    /// Starts again from the stored cursor when an operator moved it
    /// (`plugbus replay`): looked at each second, and after a commit found
    /// it moved.
    async fn follow_moved_cursor(&self, run: &mut Run) -> Result<(), String> {
        let look = run.line.take_moved() || run.cursor_checked.elapsed() >= Duration::from_secs(1);
        if !look {
            return Ok(());
        }
        run.cursor_checked = std::time::Instant::now();
        // The stored cursor is compared with the line's once this
        // consumer's own commit has landed.
        self.land(&mut run.line, &mut run.in_flight).await;
        if let Ok(Some(stored)) = self.stored_cursor().await
            && stored != run.line.position()
        {
            tracing::info!(
                tenant = %self.tenant,
                plugin = %self.plugin,
                from = run.line.position(),
                to = stored,
                "the plugin's cursor was moved; delivering from there"
            );
            run.line = self.line_at(stored).await?;
        }
        Ok(())
    }

    /// Redrives the dead letters an operator asked for, before anything
    /// else: looked for at most twice a second, a few at a time, and at
    /// once again after some were found (`Again`).
    async fn redrive_requested(
        &self,
        plugin: &Arc<plugbus_runtime::Plugin>,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        if run
            .redrives_checked
            .is_some_and(|at| at.elapsed() < Duration::from_millis(500))
        {
            return Ok(Step::Go);
        }
        run.redrives_checked = Some(std::time::Instant::now());
        if !self.inner.may_have_redrives(&self.tenant, &self.plugin) {
            return Ok(Step::Go);
        }
        let log = self.inner.log.clone();
        let (tenant, name) = (self.tenant.clone(), self.plugin.clone());
        let (partition, partitions) = (self.partition, self.inner.partitions);
        let mine = move |dead: &DeadLetter| partition_of(&dead.event, partitions) == partition;
        match tokio::task::spawn_blocking(move || log.redrives(&tenant, &name, 16)).await {
            // Each partition's consumer takes the requests of its events.
            Ok(Ok(redrives)) if redrives.iter().any(mine) => {
                // A redrive commits at the cursor the line has landed.
                if self.land(&mut run.line, &mut run.in_flight).await {
                    return Ok(self.pause_step(Duration::from_secs(1), stop).await);
                }
                if !self.may_commit() {
                    return Ok(Step::Again);
                }
                let redrives = redrives.into_iter().filter(mine);
                for dead in redrives {
                    if self
                        .redrive(plugin, dead, run.line.position(), stop)
                        .await?
                    {
                        return Ok(Step::Stop);
                    }
                }
                run.redrives_checked = None;
                Ok(Step::Again)
            }
            Ok(Ok(_)) => Ok(Step::Go),
            Ok(Err(e)) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the redrive requests: {e}");
                Ok(Step::Go)
            }
            Err(e) => Err(format!("reading redrive requests {}", join_failure(e))),
        }
    }

    /// Whether the line reads new events this round, and how: unless it
    /// holds as many as it may, or (on a log this host has alone) its
    /// last read reached the end of the log and nothing was appended
    /// through this bus since (see [`ReadAhead::needs_read`]). On a shared
    /// log other hosts append without this bus hearing of it, so a
    /// consumer there reads on every round, lest a plugin whose events
    /// arrive through another host be read once a second.
    fn read_plan(
        &self,
        line: &ReadAhead,
        appends: &Appends,
        now: tokio::time::Instant,
    ) -> Option<ReadPlan> {
        let limit = line.read_limit(&self.inner.config)?;
        // Taken before the read: an append counted after it may not be
        // in what the read sees, and makes the next round read again.
        let appended = appends.count();
        if !self.inner.leases.shared && !line.needs_read(appended, now) {
            return None;
        }
        Some(ReadPlan { limit, appended })
    }

    /// Reads new events into the line as `plan` says, then delivers the
    /// events due at `now`, in one blocking section: one hop off the
    /// async threads per round (a read right behind the head is served
    /// from the log's tail cache, in memory). Answers the events
    /// delivered and their reports (none when nothing was due), or the
    /// log's error when it could not be read (nothing delivered); an
    /// `Err` when the section panicked (the line is lost with it, and the
    /// consumer restarts from its cursor).
    async fn read_and_deliver(
        &self,
        plugin: &Arc<plugbus_runtime::Plugin>,
        run: &mut Run,
        plan: ReadPlan,
        now: tokio::time::Instant,
    ) -> Result<Result<Delivered, LogError>, String> {
        let position = run.line.position();
        let mut line = std::mem::replace(&mut run.line, ReadAhead::new(position));
        let (inner, plugin) = (self.inner.clone(), plugin.clone());
        let (tenant, partition) = (self.tenant.clone(), self.partition);
        let section = tokio::task::spawn_blocking(move || {
            let read = read_into(&inner, (&tenant, partition), &plugin, &mut line, plan, now);
            let delivered = read.map(|read| {
                let due = line.due(now, inner.config.read_batch);
                let reports = if due.is_empty() {
                    Vec::new()
                } else {
                    deliver_now(&inner, &plugin, &due)
                };
                (read, due, reports)
            });
            (line, delivered)
        })
        .await;
        let (line, delivered) =
            section.map_err(|e| format!("reading the log {}", join_failure(e)))?;
        run.line = line;
        Ok(delivered.map(|((read, at_the_end), due, reports)| {
            self.gauges.read(read);
            if at_the_end {
                self.gauges.unread.store(0, Ordering::Relaxed);
            }
            (due, reports)
        }))
    }

    /// With nothing due: commits what is finished (events skipped as not
    /// subscribed move the cursor), else waits for an append, the next
    /// retry, or a second (to look for a cursor moved by another process).
    /// While a commit is in flight, waits for its answer too: new events
    /// appended meanwhile are delivered before it lands.
    async fn idle(
        &self,
        run: &mut Run,
        appended: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        now: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        let mut commit = self.commit_from(run.line.position());
        if run.in_flight.is_none() && run.line.advance(&mut commit) {
            self.hand_over(commit, &mut run.line, &mut run.in_flight)
                .await;
            return Ok(Step::Again);
        }
        let second = deadline(now, Duration::from_secs(1));
        let wake = run.line.next_retry().unwrap_or(second).min(second);
        let answer = tokio::select! {
            answer = answer_of(&mut run.in_flight) => answer,
            () = appended => return Ok(Step::Again),
            () = tokio::time::sleep_until(wake) => return Ok(Step::Again),
            _ = stop.changed() => return Ok(Step::Stop),
        };
        if let Some(flight) = run.in_flight.take()
            && self.landed(flight, answer, &mut run.line).await
        {
            return Ok(self.pause_step(Duration::from_secs(1), stop).await);
        }
        Ok(Step::Again)
    }

    /// Judges the deliveries of the due events (`reports`, in order,
    /// stopping at the first failure), commits what came of them, and
    /// quarantines the plugin when too many deliveries in a row failed.
    async fn settle_due(
        &self,
        plugin: &Arc<plugbus_runtime::Plugin>,
        run: &mut Run,
        due: Vec<(Arc<StoredEvent>, u32)>,
        reports: Vec<(Delivery, Effects)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        let mut commit = self.commit_from(run.line.position());
        // Events after a failure in the batch were not delivered: they
        // stay pending.
        for ((stored, _), (delivery, effects)) in due.iter().zip(reports) {
            let line = &mut run.line;
            let verdict = self.judge(plugin, delivery, effects, || line.attempts(stored.seq));
            if let Verdict::Handled(_) = verdict {
                run.failures_in_a_row = 0;
            } else {
                run.failures_in_a_row = run.failures_in_a_row.saturating_add(1);
            }
            self.settle_one(stored, verdict, &mut run.line, &mut commit);
        }
        let pause = self.hand_over_after(commit, run).await;
        let limit = self.inner.config.quarantine_after;
        if limit > 0 && run.failures_in_a_row >= limit {
            run.failures_in_a_row = 0;
            // A failed commit, or a lease found gone, drops this round: its
            // failures do not quarantine the plugin.
            if self.land(&mut run.line, &mut run.in_flight).await {
                return Ok(self.pause_step(Duration::from_secs(1), stop).await);
            }
            if !self.may_commit() {
                return Ok(Step::Again);
            }
            if self.quarantine(plugin, stop).await {
                return Ok(Step::Stop);
            }
            return Ok(Step::Again);
        }
        if pause {
            return Ok(self.pause_step(Duration::from_secs(1), stop).await);
        }
        Ok(Step::Again)
    }

    /// Puts what became of the event at `stored` into the line and the
    /// commit: handled (its effects committed), waiting for its retry, or
    /// a dead letter.
    fn settle_one(
        &self,
        stored: &StoredEvent,
        verdict: Verdict,
        line: &mut ReadAhead,
        commit: &mut Commit,
    ) {
        let seq = stored.seq;
        match verdict {
            Verdict::Handled(effects) => {
                commit.emitted.extend(effects.emitted);
                commit.state.extend(effects.state);
                line.finish(seq);
            }
            Verdict::Retry(attempts, wait) => {
                metrics::counter!(
                    "plugbus_retries_total",
                    "tenant" => self.tenant.clone(),
                    "plugin" => self.plugin.clone()
                )
                .increment(1);
                line.wait(
                    stored,
                    attempts,
                    deadline(tokio::time::Instant::now(), wait),
                );
            }
            Verdict::Dead(attempts) => {
                metrics::counter!(
                    "plugbus_dead_lettered_total",
                    "tenant" => self.tenant.clone(),
                    "plugin" => self.plugin.clone()
                )
                .increment(1);
                tracing::warn!(
                    tenant = %self.tenant,
                    plugin = %self.plugin,
                    seq,
                    event_id = %stored.event.id().escape_debug(),
                    attempts = attempts.len(),
                    "event dead-lettered"
                );
                commit.dead_letters.push(DeadLetter {
                    seq,
                    event: stored.event.clone(),
                    attempts,
                });
                line.finish(seq);
            }
        }
    }

    /// Delivers `batch` through [`deliver_now`] on a blocking thread (the
    /// caller tells the deliveries to whoever listens,
    /// [`Inner::delivered`]). An `Err` (`what` failed) when the delivery
    /// task panicked.
    async fn deliver<T: Deliverable>(
        &self,
        plugin: &Arc<plugbus_runtime::Plugin>,
        batch: &[(Arc<T>, u32)],
        what: &str,
    ) -> Result<Vec<(Delivery, Effects)>, String> {
        let sent = batch.to_vec();
        let (inner, delivering) = (self.inner.clone(), plugin.clone());
        let reports = tokio::task::spawn_blocking(move || deliver_now(&inner, &delivering, &sent))
            .await
            .map_err(|e| format!("{what} {}", join_failure(e)))?;
        Ok(reports)
    }

    /// What becomes of an event after a delivery: handled, retried after
    /// a wait, or given up as a dead letter with every attempt's failure
    /// (those before taken from `earlier`, asked only when it failed).
    fn judge(
        &self,
        plugin: &plugbus_runtime::Plugin,
        delivery: Delivery,
        effects: Effects,
        earlier: impl FnOnce() -> Vec<FailedAttempt>,
    ) -> Verdict {
        let Outcome::Failed(failure) = delivery.outcome else {
            return Verdict::Handled(effects);
        };
        let mut attempts = earlier();
        match self.failed(
            plugin,
            &mut attempts,
            failure,
            &delivery.plugin_version,
            delivery.fuel,
        ) {
            Some(wait) => Verdict::Retry(attempts, wait),
            None => Verdict::Dead(attempts),
        }
    }

    /// Hands what this round's deliveries left behind (`commit`, its
    /// cursor and the events finished ahead of it still to be filled in)
    /// to the log once the commit in flight before it has landed; waits
    /// for it too when it writes state, so that the next delivery reads
    /// it (see [`IN_FLIGHT`]). True when the caller should pause: a
    /// commit failed, and the line starts again at the last durable
    /// cursor (this round's effects are dropped, its events delivered
    /// again).
    async fn hand_over_after(&self, mut commit: Commit, run: &mut Run) -> bool {
        if self.land(&mut run.line, &mut run.in_flight).await {
            return true;
        }
        commit.expected = Some(run.line.position());
        if !run.line.advance(&mut commit) {
            return false;
        }
        let writes_state = !commit.state.is_empty();
        self.hand_over(commit, &mut run.line, &mut run.in_flight)
            .await;
        writes_state && self.land(&mut run.line, &mut run.in_flight).await
    }

    /// Commits the plugin's progress and waits for it; true when the
    /// caller should pause (the log failed, and the same events are
    /// delivered again).
    #[cfg(test)]
    async fn commit(&self, commit: Commit, line: &mut ReadAhead) -> Result<bool, String> {
        let mut in_flight = None;
        self.hand_over(commit, line, &mut in_flight).await;
        Ok(self.land(line, &mut in_flight).await)
    }

    /// Hands `commit` (made from `line`) to the log without waiting for
    /// its answer, into `in_flight`, which must be empty: commits are
    /// handed over one at a time. Nothing is handed over when the lease
    /// lapsed.
    async fn hand_over(
        &self,
        commit: Commit,
        line: &mut ReadAhead,
        in_flight: &mut Option<InFlight>,
    ) {
        debug_assert!(
            usize::from(in_flight.is_some()) < IN_FLIGHT,
            "at most IN_FLIGHT commits in flight"
        );
        if !self.may_commit() {
            // The lease lapsed (not renewed in time): the next holder
            // delivers these events again. So does this consumer if the
            // keeper renews the lease before its next round: the line must
            // not keep them finished, or its next commit would move the
            // cursor past them without their effects.
            self.read_again(line).await;
            return;
        }
        let partitions = self.inner.partitions;
        let emitted: Vec<(String, Partition)> = commit
            .emitted
            .iter()
            .map(|e| (e.tenant().to_owned(), partition_of(e, partitions)))
            .collect();
        self.inner.appending(&count_by_partition(&emitted), true);
        let cursor = commit.cursor;
        *in_flight = Some(InFlight {
            answer: self.inner.log.commit(commit).into_future(),
            cursor,
            finished: line.finished_since_commit(),
            emitted,
        });
    }

    /// Waits for the commit in flight, if any, and takes in what became
    /// of it ([`Consumer::landed`]); true when the caller should pause.
    async fn land(&self, line: &mut ReadAhead, in_flight: &mut Option<InFlight>) -> bool {
        let Some(mut flight) = in_flight.take() else {
            return false;
        };
        let answer = (&mut flight.answer).await;
        self.landed(flight, answer, line).await
    }

    /// Takes in the `answer` to the commit `flight`: durable, the line's
    /// cursor moves; failed, the line starts again at its last durable
    /// cursor, and what was delivered since is delivered again (true: the
    /// caller pauses).
    async fn landed(
        &self,
        flight: InFlight,
        answer: Result<plugbus_log::Committed, LogError>,
        line: &mut ReadAhead,
    ) -> bool {
        let count = count_by_partition(&flight.emitted);
        if answer.is_err() {
            self.inner.appending(&count, false);
        }
        let woken: std::collections::BTreeSet<&str> = count.keys().map(|(t, _)| *t).collect();
        for tenant in woken {
            self.inner.appends(tenant).appended();
        }
        match answer {
            Ok(committed) => {
                if committed.cursor_moved {
                    line.committed(flight.cursor, flight.finished);
                    self.gauges.show(line);
                } else {
                    // An operator moved the cursor (`plugbus replay`): the
                    // next round goes on from there.
                    line.mark_moved();
                }
                false
            }
            Err(LogError::LeaseLost { epoch, .. }) => {
                tracing::info!(tenant = %self.tenant, plugin = %self.plugin, "the plugin's lease changed hands; its consumer stops");
                lease::lost(&self.lease, epoch);
                false
            }
            Err(e) => {
                // Nothing was committed: the events since the last commit
                // are delivered again (at least once).
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit the plugin's progress: {e}");
                self.read_again(line).await;
                true
            }
        }
    }

    /// Starts `line` again at its committed cursor, with what was finished
    /// ahead of that as stored: after a commit that was not made, the
    /// events it finished are delivered again (at least once), never
    /// committed later without their effects.
    async fn read_again(&self, line: &mut ReadAhead) {
        // What was read past the cursor is to be read again.
        self.gauges
            .unread
            .fetch_add(line.behind() as u64, Ordering::Relaxed);
        let mut fresh = ReadAhead::new(line.position());
        if let Err(e) = self.load_ahead(&mut fresh).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
        }
        *line = fresh;
        self.gauges.show(line);
    }

    /// Commits `commit`, counting the events it emits in the consumers'
    /// unread events first (and taking them back if it fails), and wakes
    /// those consumers.
    async fn commit_emitting(&self, commit: Commit) -> Result<plugbus_log::Committed, LogError> {
        let partitions = self.inner.partitions;
        let tenants: Vec<(String, Partition)> = commit
            .emitted
            .iter()
            .map(|e| (e.tenant().to_owned(), partition_of(e, partitions)))
            .collect();
        let count = count_by_partition(&tenants);
        self.inner.appending(&count, true);
        let committed = self.inner.log.commit(commit).await;
        if committed.is_err() {
            self.inner.appending(&count, false);
        }
        let woken: std::collections::BTreeSet<&str> = count.keys().map(|(t, _)| *t).collect();
        for tenant in woken {
            self.inner.appends(tenant).appended();
        }
        committed
    }

    /// Reads the events the plugin finished ahead of its cursor, which a
    /// restart must not deliver again.
    async fn load_ahead(&self, line: &mut ReadAhead) -> Result<(), LogError> {
        let (tenant, plugin, partition) =
            (self.tenant.clone(), self.plugin.clone(), self.partition);
        let ahead = plugbus_log::blocking(&self.inner.log, move |log| {
            log.partition_ahead(&tenant, &plugin, partition)
        })
        .await?;
        line.skip(ahead);
        Ok(())
    }

    /// The plugin's cursor, or for a plugin without one the end of the log
    /// (the beginning with `start = "earliest"`), committed as its cursor
    /// so that a restart starts there too.
    pub(super) async fn start_position(&self) -> Result<Seq, LogError> {
        let log = self.inner.log.clone();
        let (tenant, plugin, partition) =
            (self.tenant.clone(), self.plugin.clone(), self.partition);
        let earliest = self
            .inner
            .host
            .plugin(&self.tenant, &self.plugin)
            .is_some_and(|p| p.manifest().start == plugbus_core::Start::Earliest);
        let found = tokio::task::spawn_blocking(move || {
            log.partition_cursor(&tenant, &plugin, partition)
                .and_then(|cursor| match cursor {
                    Some(c) => Ok((c, false)),
                    None if earliest => Ok((0, true)),
                    None => log.head().map(|h| (h, true)),
                })
        })
        .await
        .map_err(|_| LogError::Closed)??;
        let (position, new) = found;
        if new {
            // This partition's cursor only (`commit_cursor` moves all).
            self.inner
                .log
                .commit(Commit {
                    tenant: self.tenant.clone(),
                    plugin: self.plugin.clone(),
                    partition: self.partition,
                    cursor: position,
                    ..Commit::default()
                })
                .await?;
        }
        Ok(position)
    }

    /// Pauses the plugin until its quarantine ends: the time runs out, a
    /// new version is loaded, or an operator resumes it. True when the bus
    /// is stopping.
    async fn quarantine(
        &self,
        plugin: &plugbus_runtime::Plugin,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let version = plugin.version().to_owned();
        let length = self.inner.config.quarantine_for;
        let (wake, recorded) = self.begin_quarantine(&version, length).await;
        tracing::warn!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            version = %version,
            seconds = length.as_secs(),
            "plugin quarantined after {} failed deliveries in a row; its events wait",
            self.inner.config.quarantine_after
        );
        let until = deadline(tokio::time::Instant::now(), length);
        let stopping = self
            .sit_out_quarantine(&version, until, &wake, recorded, stop)
            .await;
        self.end_quarantine(stopping).await;
        stopping
    }

    /// Records the plugin's quarantine, in the bus and in the log (where
    /// an operator sees it and can lift it, `plugbus quarantine`); answers
    /// what wakes it, and whether the log has the record.
    async fn begin_quarantine(&self, version: &str, length: Duration) -> (Arc<Notify>, bool) {
        let since_ms = now_ms();
        // Recorded as the bus keeps it: no later than MAX_WAIT from now, a
        // time every reader of the record can print.
        let until_ms = since_ms
            .saturating_add(i64::try_from(length.min(MAX_WAIT).as_millis()).unwrap_or(i64::MAX));
        let wake = Arc::new(Notify::new());
        let record = Quarantine {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            version: version.to_owned(),
            since_ms,
            until_ms,
        };
        // A failure to record it only means that.
        let recorded = self
            .inner
            .log
            .set_quarantine(QuarantineChange::Begin(record.clone()))
            .await;
        if let Err(e) = &recorded {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot record the quarantine: {e}");
        }
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.key(), (record, wake.clone()));
        (wake, recorded.is_ok())
    }

    /// Waits until `until`, a version other than `version` is loaded, the
    /// quarantine is resumed (`wake`) or lifted in the log (looked at each
    /// second when `recorded`), or the bus stops (true).
    async fn sit_out_quarantine(
        &self,
        version: &str,
        until: tokio::time::Instant,
        wake: &Notify,
        recorded: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut ticks = 0u32;
        loop {
            let replaced = self
                .inner
                .host
                .plugin(&self.tenant, &self.plugin)
                .is_none_or(|p| p.version() != version);
            if replaced || tokio::time::Instant::now() >= until {
                return false;
            }
            ticks = ticks.wrapping_add(1);
            if recorded && ticks.is_multiple_of(5) && !self.still_quarantined().await {
                return false;
            }
            tokio::select! {
                () = wake.notified() => return false,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return true,
            }
        }
    }

    /// Forgets the quarantine, in the bus and in the log, however it
    /// ended: a restarted host starts the plugin afresh.
    async fn end_quarantine(&self, stopping: bool) {
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key());
        let lift = QuarantineChange::Lift {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
        };
        if let Err(e) = self.inner.log.set_quarantine(lift).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot record the end of the quarantine: {e}");
        }
        if !stopping {
            tracing::info!(tenant = %self.tenant, plugin = %self.plugin, "quarantine over");
        }
    }

    /// The plugin as the bus keys it.
    fn key(&self) -> PluginKey {
        (self.tenant.clone(), self.plugin.clone())
    }

    /// Delivers a dead letter an operator asked to redrive to the plugin's
    /// current version, through the one delivery path, retried like any
    /// event. Handled, its dead letter is deleted in the transaction that
    /// keeps its effects; failed for the last time, the dead letter gets
    /// the new attempts appended. The cursor stays where it is. True when
    /// the bus is stopping; an error when the delivery ended without a
    /// report.
    async fn redrive(
        &self,
        plugin: &Arc<plugbus_runtime::Plugin>,
        dead: DeadLetter,
        position: Seq,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        tracing::info!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            seq = dead.seq,
            event_id = %dead.event.id().escape_debug(),
            "redriving a dead letter"
        );
        let dead = Arc::new(dead);
        let mut attempts: Vec<FailedAttempt> = Vec::new();
        loop {
            let attempt = u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX);
            let reports = self
                .deliver(plugin, &[(dead.clone(), attempt)], "redriving")
                .await?;
            self.inner.delivered(&reports);
            let Some((delivery, effects)) = reports.into_iter().next() else {
                return Err("a redriven delivery ended without a report".to_owned());
            };
            let mut commit = self.commit_from(position);
            match self.judge(plugin, delivery, effects, || std::mem::take(&mut attempts)) {
                Verdict::Handled(effects) => {
                    commit.emitted = effects.emitted;
                    commit.state = effects.state;
                    commit.redriven.push(dead.seq);
                }
                Verdict::Retry(so_far, wait) => {
                    attempts = so_far;
                    if self.pause(wait, stop).await {
                        return Ok(true);
                    }
                    continue;
                }
                Verdict::Dead(mut so_far) => {
                    let mut history = dead.attempts.clone();
                    history.append(&mut so_far);
                    commit.dead_letters.push(DeadLetter {
                        seq: dead.seq,
                        event: dead.event.clone(),
                        attempts: history,
                    });
                }
            }
            return self.commit_redrive(commit, stop).await;
        }
    }

    /// Commits a redrive; true when the bus stops while it waits a second
    /// after a failed commit (the request stays, and is taken again).
    async fn commit_redrive(
        &self,
        commit: Commit,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        if !self.may_commit() {
            // The request stays; the next holder redrives it.
            return Ok(false);
        }
        match self.commit_emitting(commit).await {
            Ok(_) => Ok(false),
            Err(LogError::LeaseLost { epoch, .. }) => {
                lease::lost(&self.lease, epoch);
                Ok(false)
            }
            Err(e) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit a redrive: {e}");
                Ok(self.pause(Duration::from_secs(1), stop).await)
            }
        }
    }

    /// An empty commit of the plugin's progress from `position`: it moves
    /// the cursor only if nobody else moved it since.
    fn commit_from(&self, position: Seq) -> Commit {
        Commit {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            partition: self.partition,
            cursor: position,
            expected: Some(position),
            lease: self.current_epoch(),
            ..Commit::default()
        }
    }

    /// Records a failed attempt; answers how long to wait before the next
    /// when the event may be tried again, `None` when it is given up.
    fn failed(
        &self,
        plugin: &plugbus_runtime::Plugin,
        attempts: &mut Vec<FailedAttempt>,
        failure: plugbus_core::Failure,
        plugin_version: &str,
        fuel: u64,
    ) -> Option<Duration> {
        let retryable = failure.kind.is_retryable();
        let max_attempts = plugin.manifest().max_attempts;
        attempts.push(FailedAttempt {
            kind: failure.kind,
            message: failure.message,
            fuel,
            plugin_version: plugin_version.to_owned(),
            at_ms: now_ms(),
        });
        let used = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
        self.inner
            .config
            .retry
            .retry_after(used, retryable, max_attempts)
    }

    /// Whether the log still records this plugin's quarantine; true when it
    /// cannot be read (the quarantine then runs its time).
    async fn still_quarantined(&self) -> bool {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        tokio::task::spawn_blocking(move || {
            log.quarantines().map_or(true, |all| {
                all.iter().any(|q| q.tenant == tenant && q.plugin == plugin)
            })
        })
        .await
        .unwrap_or(true)
    }

    /// The plugin's cursor in its partition as stored.
    async fn stored_cursor(&self) -> Result<Option<Seq>, LogError> {
        let (tenant, plugin, partition) =
            (self.tenant.clone(), self.plugin.clone(), self.partition);
        plugbus_log::blocking(&self.inner.log, move |log| {
            log.partition_cursor(&tenant, &plugin, partition)
        })
        .await
    }

    /// Whether another partition's consumer of the plugin has quarantined
    /// it (a quarantine pauses every partition): on this host, known at
    /// once; on another, from the log, asked at most once a second. Never
    /// with one partition.
    async fn quarantined_elsewhere(&self, run: &mut Run) -> bool {
        if self.inner.partitions <= 1 {
            return false;
        }
        let here = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&self.key());
        if here {
            return true;
        }
        if run
            .quarantine_checked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        run.quarantine_checked = Some(std::time::Instant::now());
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            log.quarantines()
                .is_ok_and(|all| all.iter().any(|q| q.tenant == tenant && q.plugin == plugin))
        })
        .await
        .unwrap_or(false);
        if recorded {
            // Asked again at once next round, until it is lifted.
            run.quarantine_checked = None;
        }
        recorded
    }

    /// Waits `wait`; true when the bus is stopping.
    async fn pause(&self, wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => *stop.borrow(),
            _ = stop.changed() => true,
        }
    }

    /// Waits `wait`, then starts the next round (`Again`), unless the bus
    /// is stopping.
    async fn pause_step(&self, wait: Duration, stop: &mut watch::Receiver<bool>) -> Step {
        if self.pause(wait, stop).await {
            Step::Stop
        } else {
            Step::Again
        }
    }
}

/// A delivery's share of its event's chain budget: `budget` split among
/// the `subscribers` plugins the event reaches (at least one), so that
/// many subscribers cannot multiply a chain.
pub fn budget_share(budget: usize, subscribers: usize) -> usize {
    budget / subscribers.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::DurableConfig;
    use plugbus_core::state::StateWrite;
    use plugbus_log::MemoryLog;
    use plugbus_runtime::{Host, HostConfig};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A consumer of `acme/p` over an embedded log, and the log.
    fn consumer() -> (Consumer, Arc<dyn EventLog>) {
        let host = Arc::new(Host::new(HostConfig::default()).expect("a host"));
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let config = DurableConfig::default();
        let leases = lease::Leases::new(config.host_id.clone(), config.lease_ttl, true);
        let inner = Arc::new(Inner {
            host,
            log: log.clone(),
            config,
            tenants: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            gauges: Mutex::new(HashMap::new()),
            restarts: Mutex::new(BTreeMap::new()),
            stop: watch::Sender::new(false),
            deliveries: tokio::sync::broadcast::Sender::new(16),
            quarantined: Mutex::new(HashMap::new()),
            failures: Mutex::new(crate::failures::Failures::new(
                crate::failures::RECENT_FAILURES,
            )),
            leases,
            partitions: 1,
            dead_letters: Mutex::new(None),
        });
        let key = ("acme".to_owned(), "p".to_owned(), 0);
        (Consumer::new(&inner, &key, Arc::default()), log)
    }

    fn stored(seq: Seq) -> StoredEvent {
        let event = Event::from_json_value(serde_json::json!({
            "specversion": "1.0",
            "id": format!("e-{seq}"),
            "source": "/s",
            "type": "t.x",
            "tenant": "acme",
            "subject": format!("k{seq}"),
        }))
        .expect("an event");
        StoredEvent {
            seq,
            appended_at_ms: 0,
            event,
            bytes: 10,
        }
    }

    /// A batch handled while the lease had lapsed is not committed; when
    /// the keeper renews the lease (same epoch) before the next round, the
    /// consumer goes on, and its next commit must not move the cursor past
    /// that batch, whose effects were never committed: the batch is
    /// delivered again.
    #[tokio::test]
    async fn a_batch_not_committed_for_a_lapsed_lease_is_not_skipped_after_a_renewal() {
        let (consumer, log) = consumer();
        let epoch = 7;
        consumer.epoch.store(epoch, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let held = |until| Holding::Held {
            epoch: Some(epoch),
            until: Some(until),
            hand_back: false,
        };
        consumer
            .lease
            .send_replace(held(now + Duration::from_secs(60)));
        let mut start = consumer.commit_from(0);
        start.expected = None;
        log.commit(start).await.expect("a cursor");
        let mut line = ReadAhead::new(0);
        line.take((1..=3).map(stored).collect(), |_| true);
        // Handled: each wrote its state.
        let mut commit = consumer.commit_from(line.position());
        for seq in 1..=3 {
            line.finish(seq);
            commit.state.push(StateWrite {
                key: format!("k{seq}"),
                value: Some(b"handled".to_vec()),
            });
        }
        assert!(line.advance(&mut commit));
        // The renewal is late: the lease is not usable at the commit.
        consumer.lease.send_replace(held(
            now.checked_sub(Duration::from_millis(1)).unwrap_or(now),
        ));
        let pause = consumer.commit(commit, &mut line).await.expect("commit");
        assert!(!pause);
        assert_eq!(log.cursor("acme", "p").expect("cursor"), Some(0));
        // Renewed under the same epoch before the next round.
        consumer
            .lease
            .send_replace(held(now + Duration::from_secs(60)));
        assert_eq!(consumer.lease_now(Some(epoch)), LeaseNow::Use);
        // The next round finds nothing due and commits what is finished.
        let mut next = consumer.commit_from(line.position());
        if line.advance(&mut next) {
            consumer.commit(next, &mut line).await.expect("commit");
        }
        assert_eq!(
            log.cursor("acme", "p").expect("cursor"),
            Some(0),
            "the cursor moved past events whose effects were never committed"
        );
    }

    #[test]
    fn a_budget_is_shared_among_subscribers() {
        assert_eq!(budget_share(10_000, 1), 10_000);
        assert_eq!(budget_share(10_000, 3), 3_333);
        assert_eq!(budget_share(2, 2), 1);
        assert_eq!(budget_share(1, 2), 0);
        // Nobody subscribed counts as one.
        assert_eq!(budget_share(7, 0), 7);
    }
}
