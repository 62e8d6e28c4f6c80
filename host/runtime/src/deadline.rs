//! Deadlines that hold inside host calls, and the recycling of long-lived
//! instances.
//!
//! # Deadlines
//!
//! The epoch deadline ([`crate::engine`]) interrupts guest *code*; it cannot
//! interrupt a guest that is blocked inside a host call, which waits on the
//! host's side. With the WASI context a plugin gets (see `sandbox.rs`: no
//! preopened directories, no sockets, no name lookups, an empty stdin, and
//! stdout and stderr captured into the host log) the only host calls that can
//! block are those of `wasi:io/poll`: `poll` and `[method]pollable.block`,
//! through which a guest waits for a clock subscription
//! (`std::thread::sleep`, `poll(2)`, `nanosleep`) or for a stream. Every other
//! call returns at once:
//! - `wasi:io/streams`: the blocking stream calls (`blocking-read`,
//!   `blocking-skip`, `blocking-write-and-flush`,
//!   `blocking-write-zeroes-and-flush`, `blocking-flush`, `blocking-splice`)
//!   wait only for a stream to be ready: stdin is closed (reads end at once)
//!   and the captured stdout and stderr are always ready to take 64 KiB; no
//!   other stream can be opened, since there are no files and no sockets;
//! - `wasi:filesystem`: there is no descriptor to call it on;
//! - `wasi:sockets`: TCP, UDP and name lookups are refused when the socket is
//!   created or the lookup starts;
//! - `wasi:clocks` and `wasi:random`: reading a clock or random bytes (their
//!   length capped by WASI) never waits; subscribing to a clock only creates a
//!   pollable, which is waited for through `wasi:io/poll`;
//! - the plugbus interfaces (`emit`, `log`, `config-get`, `state`,
//!   `secrets`, `batch`) do bounded work on the host's own data;
//! - `wasi:http` (WIT 0.3.0): `outgoing-handler.handle` starts the request
//!   on the host's runtime and returns a future at once, which the guest
//!   waits for through `wasi:io/poll`; but the streams of a request's and a
//!   response's bodies are real streams that wait for the network, or for
//!   nobody: a guest can write a request body before it hands the request
//!   to `handle`, and block once the body's buffer is full.
//!
//! So [`add_to_linker`] shadows `poll` and `[method]pollable.block`, and
//! the blocking calls of `wasi:io/streams` listed above, with versions that
//! wait at most until the delivery's [`Deadline`], armed with the fuel and
//! the epoch deadline for instantiation, for each event, and for each event
//! of a batch. At the deadline the call returns a trap,
//! [`DeadlineExceeded`], which the delivery reports as a `timeout`, and the
//! instance (and its store) is discarded like after any trap. (Dropping a
//! stream cancels it, which does not wait.)
//!
//! The wait does not depend on a tokio timer: the waiting thread parks with
//! the time left as its timeout, so a guest is woken at its deadline even on
//! a runtime whose timers are not being driven, or that is shutting down.
//!
//! The grace: a delivery ends within its time limit plus [`grace`]: two
//! epoch ticks for guest code (the epoch deadline is counted in whole ticks,
//! rounded up, from a tick that may be about to pass), plus the time the
//! operating system takes to wake a parked thread, for a guest blocked in a
//! host call. So no plugin holds its blocking thread, its consumer or the
//! host's shutdown for longer than its time limit plus the grace, and the
//! operator's ceiling on time limits bounds every plugin's.
//!
//! # Recycling
//!
//! An instance that serves event after event ([`crate::InstanceMode::Reuse`])
//! is dropped, and a fresh one instantiated for the next event, after a
//! number of events, or when its linear memory stays above a high-water mark
//! of its memory limit for a number of deliveries in a row: a plugin that
//! leaks memory slowly is recycled before its limit fails it mid-event. See
//! [`RecyclePolicy`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi_io::bindings::wasi::io::poll as io_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as io_streams;
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

/// The `wasi:io/poll` interface as wasmtime-wasi defines it in the linker.
///
/// A guest's import of any `wasi:io/poll@0.2.x` resolves to this exact
/// name (the linker matches 0.2 versions semver-wise, to the newest one it
/// has, and an import of this exact version matches it exactly), so
/// shadowing its functions under this name covers every version a guest
/// may import. [`add_to_linker`] checks that wasmtime-wasi still defines
/// it, so an upgrade of wasmtime-wasi that moves to another version fails
/// the host's start rather than leaving the shadows unused.
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// The `wasi:io/streams` interface as wasmtime-wasi defines it in the
/// linker, whose blocking calls are shadowed the same way: since WIT 0.3.0
/// a guest can hold streams that wait on the network (the bodies of its
/// outbound HTTP requests and their responses), and a hostile one can
/// block on a request body nobody reads.
const WASI_IO_STREAMS: &str = "wasi:io/streams@0.2.12";

/// How long past its time limit a delivery may still take to end, with
/// epoch ticks of `epoch_tick` ([`crate::engine::EngineOptions::epoch_tick`]):
/// two ticks (the epoch deadline is counted in whole ticks, rounded up, from
/// a tick that may be about to pass) and [`WAKE_SLACK`] for a thread blocked
/// in a host call to be woken and unwind. 20 ms with the default 5 ms tick.
///
/// A plugin's blocking thread, its consumer and the host's shutdown are held
/// for at most its time limit plus this grace (plus the length of one wasm
/// instruction such as a `memory.copy`, which its memory limit bounds): size
/// a shutdown's drain time as the operator's ceiling on `timeout_ms` plus
/// the grace.
pub fn grace(epoch_tick: Duration) -> Duration {
    epoch_tick.saturating_mul(2).saturating_add(WAKE_SLACK)
}

/// The time allowed for a parked thread to be woken and scheduled, part of
/// the [`grace`].
pub const WAKE_SLACK: Duration = Duration::from_millis(10);

/// When the delivery under way in a store must end: its time limit counted
/// from when the store was armed for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// The instant, or `None` when there is no deadline (nothing armed yet,
    /// or a time limit too large to represent).
    at: Option<Instant>,
    /// The time limit it was armed with.
    timeout: Duration,
}

impl Deadline {
    /// Arms the deadline for a delivery that starts now, with `timeout`.
    pub fn arm(&mut self, timeout: Duration) {
        self.arm_at(Instant::now(), timeout);
    }

    /// Arms the deadline for a delivery that starts at `now`.
    pub fn arm_at(&mut self, now: Instant, timeout: Duration) {
        self.timeout = timeout;
        self.at = now.checked_add(timeout);
    }

    /// Arms the deadline again, with the same time limit, for the next event
    /// of a batch.
    pub fn restart(&mut self) {
        self.arm(self.timeout);
    }

    /// The instant the delivery must end by, if any.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// The time limit the deadline was armed with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A guest was blocked in a host call when its delivery's deadline passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timeout: the handler was blocked in {call} past its wall-clock limit of {} ms",
    .timeout.as_millis()
)]
pub(crate) struct DeadlineExceeded {
    /// The host call: `wasi:io/poll.poll`, …
    pub call: &'static str,
    /// The delivery's time limit.
    pub timeout: Duration,
}

/// A host call the guest was blocked in failed inside the host (a panic,
/// for example a timer of a runtime that is shutting down): the guest is
/// stopped with this trap rather than the host thread unwinding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host call {call} was interrupted: {reason}")]
pub(crate) struct HostCallInterrupted {
    /// The host call.
    pub call: &'static str,
    /// What happened.
    pub reason: String,
}

/// Why [`block_until`] returned without the future's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unfinished {
    /// The deadline passed.
    Expired,
    /// Polling the future panicked, with this message.
    Panicked(String),
}

/// Wakes the thread that waits in [`block_until`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, in tokio's context (the
/// runtime the thread belongs to, or wasmtime-wasi's own when it belongs to
/// none), but gives up at `deadline`.
///
/// The thread parks between polls, at most until the deadline, so the
/// deadline holds whether or not the runtime's timers are driven. A panic
/// while polling is caught and returned: the future is dropped.
pub(crate) fn block_until<F: Future>(
    future: F,
    deadline: Option<Instant>,
) -> Result<F::Output, Unfinished> {
    wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(Unfinished::Expired);
            }
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
            match polled {
                Ok(Poll::Ready(output)) => return Ok(output),
                Ok(Poll::Pending) => {}
                Err(panic) => return Err(Unfinished::Panicked(panic_text(panic.as_ref()))),
            }
            match deadline {
                // Spurious wake-ups only poll again.
                Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
    })
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Waits for a host call's future under the store's deadline; the trap
/// that stops the guest when it does not finish in time.
fn wait_in<F: Future>(
    call: &'static str,
    deadline: Deadline,
    future: F,
) -> wasmtime::Result<F::Output> {
    block_until(future, deadline.at()).map_err(|unfinished| match unfinished {
        Unfinished::Expired => wasmtime::Error::new(DeadlineExceeded {
            call,
            timeout: deadline.timeout(),
        }),
        Unfinished::Panicked(reason) => {
            tracing::error!("host call {call} panicked: {reason}");
            wasmtime::Error::new(HostCallInterrupted { call, reason })
        }
    })
}

/// The data of a store whose guest's waits in `wasi:io/poll` end at the
/// deadline of the delivery under way.
pub(crate) trait HasDeadline: WasiView {
    /// When the delivery under way must end.
    fn deadline(&self) -> Deadline;
}

/// `wasi:io/poll.poll`, bounded by the delivery's deadline.
fn poll<T: HasDeadline>(
    mut store: StoreContextMut<'_, T>,
    (pollables,): (Vec<Resource<DynPollable>>,),
) -> wasmtime::Result<(Vec<u32>,)> {
    let state = store.data_mut();
    let deadline = state.deadline();
    let table = state.ctx().table;
    let ready = wait_in(
        "wasi:io/poll.poll",
        deadline,
        io_poll::Host::poll(table, pollables),
    )??;
    Ok((ready,))
}

/// `wasi:io/poll.[method]pollable.block`, bounded by the delivery's deadline.
fn block<T: HasDeadline>(
    mut store: StoreContextMut<'_, T>,
    (pollable,): (Resource<DynPollable>,),
) -> wasmtime::Result<()> {
    let state = store.data_mut();
    let deadline = state.deadline();
    let table = state.ctx().table;
    wait_in(
        "wasi:io/poll.[method]pollable.block",
        deadline,
        io_poll::HostPollable::block(table, pollable),
    )?
}

/// The result of a blocking stream call as the guest receives it: the
/// stream's error converted into its WIT form (a trap stays a trap).
fn stream_result<R>(
    table: &mut wasmtime::component::ResourceTable,
    result: wasmtime_wasi_io::streams::StreamResult<R>,
) -> wasmtime::Result<(Result<R, io_streams::StreamError>,)> {
    match result {
        Ok(value) => Ok((Ok(value),)),
        Err(error) => Ok((Err(io_streams::Host::convert_stream_error(table, error)?),)),
    }
}

/// Defines the deadline-bounded version of a blocking `wasi:io/streams`
/// method: `$call` is the async method of wasmtime-wasi-io's host
/// implementation it waits for.
macro_rules! bounded_stream_call {
    ($name:ident, $wit:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty, $trait:ident :: $call:ident) => {
        fn $name<T: HasDeadline>(
            mut store: StoreContextMut<'_, T>,
            ($($arg,)*): ($($ty,)*),
        ) -> wasmtime::Result<(Result<$ret, io_streams::StreamError>,)> {
            let state = store.data_mut();
            let deadline = state.deadline();
            let table = state.ctx().table;
            let result = wait_in(
                concat!("wasi:io/streams.", $wit),
                deadline,
                io_streams::$trait::$call(&mut *table, $($arg),*),
            )?;
            stream_result(table, result)
        }
    };
}

bounded_stream_call!(blocking_read, "[method]input-stream.blocking-read",
    (stream: Resource<DynInputStream>, len: u64) -> Vec<u8>, HostInputStream::blocking_read);
bounded_stream_call!(blocking_skip, "[method]input-stream.blocking-skip",
    (stream: Resource<DynInputStream>, len: u64) -> u64, HostInputStream::blocking_skip);
bounded_stream_call!(blocking_write_and_flush, "[method]output-stream.blocking-write-and-flush",
    (stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> (), HostOutputStream::blocking_write_and_flush);
bounded_stream_call!(blocking_write_zeroes_and_flush, "[method]output-stream.blocking-write-zeroes-and-flush",
    (stream: Resource<DynOutputStream>, len: u64) -> (), HostOutputStream::blocking_write_zeroes_and_flush);
bounded_stream_call!(blocking_flush, "[method]output-stream.blocking-flush",
    (stream: Resource<DynOutputStream>) -> (), HostOutputStream::blocking_flush);
bounded_stream_call!(blocking_splice, "[method]output-stream.blocking-splice",
    (dest: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> u64, HostOutputStream::blocking_splice);

/// Shadows the blocking functions of `wasi:io/poll`, which the WASI
/// registration put in `linker`, with versions bounded by the delivery's
/// deadline. Call it after registering WASI.
pub(crate) fn add_to_linker<T: HasDeadline + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    // Without shadowing, defining a name WASI defined fails: that failure
    // proves the shadows below replace WASI's own functions, under the
    // name guests' imports resolve to.
    linker.allow_shadowing(false);
    let defined_by_wasi = linker
        .instance(WASI_IO_POLL)?
        .func_wrap("poll", poll::<T>)
        .is_err();
    let streams_defined_by_wasi = linker
        .instance(WASI_IO_STREAMS)?
        .func_wrap("[method]output-stream.blocking-flush", blocking_flush::<T>)
        .is_err();
    linker.allow_shadowing(true);
    if !defined_by_wasi {
        return Err(wasmtime::Error::msg(format!(
            "the WASI registration no longer defines {WASI_IO_POLL}: the deadline of guests \
             blocked in wasi:io/poll would not hold (update deadline::WASI_IO_POLL)"
        )));
    }
    if !streams_defined_by_wasi {
        return Err(wasmtime::Error::msg(format!(
            "the WASI registration no longer defines {WASI_IO_STREAMS}: the deadline of guests \
             blocked in its blocking calls would not hold (update deadline::WASI_IO_STREAMS)"
        )));
    }
    let mut instance = linker.instance(WASI_IO_POLL)?;
    instance.func_wrap("poll", poll::<T>)?;
    instance.func_wrap("[method]pollable.block", block::<T>)?;
    let mut streams = linker.instance(WASI_IO_STREAMS)?;
    streams.func_wrap("[method]input-stream.blocking-read", blocking_read::<T>)?;
    streams.func_wrap("[method]input-stream.blocking-skip", blocking_skip::<T>)?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        blocking_write_and_flush::<T>,
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        blocking_write_zeroes_and_flush::<T>,
    )?;
    streams.func_wrap("[method]output-stream.blocking-flush", blocking_flush::<T>)?;
    streams.func_wrap(
        "[method]output-stream.blocking-splice",
        blocking_splice::<T>,
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// When an instance that serves many events is recycled; part of the
/// host's configuration (see [`crate::HostConfig::recycle_after_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecyclePolicy {
    /// Recycle after this many events; 0 never.
    pub after_events: u64,
    /// The high-water mark, in percent of the memory limit; 0 turns the
    /// memory rule off.
    pub memory_percent: u8,
    /// How many deliveries in a row must end above the mark.
    pub high_water_deliveries: u32,
}

/// Why an instance was recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecycleReason {
    /// It handled the number of events of the policy.
    Events,
    /// Its memory stayed above the high-water mark.
    Memory,
}

impl RecycleReason {
    /// The reason's label: `events` or `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Memory => "memory",
        }
    }
}

/// What an instance has done so far, for the recycling rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Life {
    /// Events it handled, or began to handle.
    events: u64,
    /// Deliveries in a row that ended with its memory above the mark.
    high_water: u32,
}

impl Life {
    /// Records a delivery (one call into the instance) of `events` events
    /// after which the instance holds `memory_used` bytes of linear memory
    /// under a limit of `memory_limit`, and tells whether it is to be
    /// recycled, and why.
    pub fn after_delivery(
        &mut self,
        events: u64,
        memory_used: u64,
        memory_limit: u64,
        policy: &RecyclePolicy,
    ) -> Option<RecycleReason> {
        self.events = self.events.saturating_add(events);
        let above = policy.memory_percent > 0
            && u128::from(memory_used) * 100
                > u128::from(memory_limit) * u128::from(policy.memory_percent.min(100));
        self.high_water = if above {
            self.high_water.saturating_add(1)
        } else {
            0
        };
        if above && self.high_water >= policy.high_water_deliveries.max(1) {
            Some(RecycleReason::Memory)
        } else if policy.after_events > 0 && self.events >= policy.after_events {
            Some(RecycleReason::Events)
        } else {
            None
        }
    }
}

/// A plugin's count of recycled instances, and its metric
/// `plugbus_instances_recycled_total{tenant,plugin,reason}`, each series
/// registered when it is first counted (no zero series before).
pub(crate) struct Recycling {
    recycled: AtomicU64,
    tenant: String,
    plugin: String,
    by_events: std::sync::OnceLock<metrics::Counter>,
    by_memory: std::sync::OnceLock<metrics::Counter>,
}

impl Recycling {
    /// The counters of the plugin `plugin` of `tenant`.
    pub fn new(tenant: &str, plugin: &str) -> Self {
        Self {
            recycled: AtomicU64::new(0),
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            by_events: std::sync::OnceLock::new(),
            by_memory: std::sync::OnceLock::new(),
        }
    }

    fn counter(&self, reason: RecycleReason) -> &metrics::Counter {
        let slot = match reason {
            RecycleReason::Events => &self.by_events,
            RecycleReason::Memory => &self.by_memory,
        };
        slot.get_or_init(|| {
            metrics::counter!(
                "plugbus_instances_recycled_total",
                "tenant" => self.tenant.clone(),
                "plugin" => self.plugin.clone(),
                "reason" => reason.as_str()
            )
        })
    }

    /// Counts and logs a recycled instance of the plugin `label`
    /// (`<tenant>/<plugin>`).
    pub fn record(&self, label: &str, reason: RecycleReason, memory_used: u64) {
        self.recycled.fetch_add(1, Ordering::Relaxed);
        self.counter(reason).increment(1);
        tracing::debug!(
            plugin = %label,
            reason = reason.as_str(),
            memory_used,
            "instance recycled"
        );
    }

    /// How many instances were recycled.
    pub fn count(&self) -> u64 {
        self.recycled.load(Ordering::Relaxed)
    }
}

/// Whether an instantiation failed because the pooling allocator had no
/// free slot (instances, memories, tables or stacks): the host's capacity,
/// not the plugin, so the delivery waits for a slot rather than failing.
pub(crate) fn pool_exhausted(err: &wasmtime::Error) -> bool {
    err.is::<wasmtime::PoolConcurrencyLimitError>()
        || err
            .chain()
            .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// The longest a delivery waits for a free slot of the pooling allocator
/// before it fails (as a retryable timeout). Slots are held by deliveries,
/// each bounded by its own deadline, so one frees long before this unless
/// idle reused instances hold them all.
pub(crate) const SLOT_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Backs off between attempts to get a slot of the pooling allocator.
pub(crate) struct SlotWait {
    started: Instant,
    pause: Duration,
    attempts: u32,
}

impl SlotWait {
    /// A wait that starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            pause: Duration::from_millis(1),
            attempts: 0,
        }
    }

    /// Sleeps before the next attempt and returns true, or returns false
    /// when the wait has lasted [`SLOT_WAIT_LIMIT`].
    pub fn again(&mut self) -> bool {
        if self.started.elapsed() >= SLOT_WAIT_LIMIT {
            return false;
        }
        if self.attempts == 0 {
            tracing::debug!("the pooling allocator has no free slot; waiting for one");
        }
        self.attempts = self.attempts.saturating_add(1);
        std::thread::sleep(self.pause);
        self.pause = next_pause(self.pause);
        true
    }

    /// How long it has waited.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The pause after `pause`: doubled, at most 50 ms.
fn next_pause(pause: Duration) -> Duration {
    pause.saturating_mul(2).min(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_counts_from_its_arming() {
        let now = Instant::now();
        let mut deadline = Deadline::default();
        assert_eq!(deadline.at(), None);
        deadline.arm_at(now, Duration::from_millis(100));
        assert_eq!(deadline.at(), Some(now + Duration::from_millis(100)));
        assert_eq!(deadline.timeout(), Duration::from_millis(100));
        deadline.arm_at(now, Duration::ZERO);
        assert_eq!(deadline.at(), Some(now));
    }

    #[test]
    fn a_time_limit_too_large_to_represent_is_no_deadline() {
        let mut deadline = Deadline::default();
        deadline.arm(Duration::MAX);
        assert_eq!(deadline.at(), None);
    }

    #[test]
    fn restarting_keeps_the_time_limit() {
        let mut deadline = Deadline::default();
        deadline.arm(Duration::from_secs(2));
        let first = deadline.at().expect("armed");
        std::thread::sleep(Duration::from_millis(2));
        deadline.restart();
        assert_eq!(deadline.timeout(), Duration::from_secs(2));
        assert!(deadline.at().expect("armed") > first);
    }

    #[test]
    fn the_grace_is_two_ticks_and_the_wake_slack() {
        assert_eq!(
            grace(Duration::from_millis(5)),
            Duration::from_millis(10) + WAKE_SLACK
        );
        assert_eq!(grace(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn a_ready_future_is_not_stopped() {
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        // Even with no time left, a finished call is not turned into a
        // timeout… unless the deadline had passed before it was polled.
        assert_eq!(block_until(async { 7 }, None), Ok(7));
        assert_eq!(
            block_until(async { 7 }, Some(Instant::now() + Duration::from_secs(60))),
            Ok(7)
        );
        if let Some(past) = past {
            assert_eq!(
                block_until(async { 7 }, Some(past)),
                Err(Unfinished::Expired)
            );
        }
    }

    #[test]
    fn a_pending_future_is_given_up_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let waited = block_until(std::future::pending::<()>(), Some(deadline));
        assert_eq!(waited, Err(Unfinished::Expired));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        let (send, receive) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let _ = send.send(5);
        });
        let got = block_until(receive, Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(got.map(Result::ok), Ok(Some(5)));
        sender.join().expect("sender thread");
    }

    #[test]
    fn a_panic_while_polling_is_returned() {
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("timer is shut down");
            }
        };
        let got: Result<(), _> = block_until(panicking, None);
        assert_eq!(got, Err(Unfinished::Panicked("timer is shut down".into())));
    }

    /// A store's data with WASI and a deadline, and nothing else.
    struct Guest {
        wasi: wasmtime_wasi::WasiCtx,
        table: wasmtime::component::ResourceTable,
        deadline: Deadline,
    }

    impl WasiView for Guest {
        fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
            wasmtime_wasi::WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl HasDeadline for Guest {
        fn deadline(&self) -> Deadline {
            self.deadline
        }
    }

    #[test]
    fn the_bounded_poll_replaces_the_one_wasi_registers() {
        let engine =
            crate::engine::shared(&crate::engine::EngineOptions::default()).expect("engine");
        let mut linker = Linker::<Guest>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI");
        add_to_linker(&mut linker).expect("the deadline-bounded poll");
        // Without WASI's registration there is nothing to shadow: refused.
        let mut bare = Linker::<Guest>::new(&engine);
        let err = add_to_linker(&mut bare).unwrap_err();
        assert!(err.to_string().contains(WASI_IO_POLL), "{err}");
    }

    const POLICY: RecyclePolicy = RecyclePolicy {
        after_events: 3,
        memory_percent: 75,
        high_water_deliveries: 2,
    };

    #[test]
    fn recycled_after_n_events_not_before() {
        let mut life = Life::default();
        assert_eq!(life.after_delivery(1, 0, 100, &POLICY), None);
        assert_eq!(life.after_delivery(1, 0, 100, &POLICY), None);
        assert_eq!(
            life.after_delivery(1, 0, 100, &POLICY),
            Some(RecycleReason::Events)
        );
        // A batch counts each of its events.
        let mut life = Life::default();
        assert_eq!(
            life.after_delivery(5, 0, 100, &POLICY),
            Some(RecycleReason::Events)
        );
        let never = RecyclePolicy {
            after_events: 0,
            ..POLICY
        };
        let mut life = Life::default();
        for _ in 0..1000 {
            assert_eq!(life.after_delivery(1, 0, 100, &never), None);
        }
    }

    #[test]
    fn recycled_when_memory_stays_above_the_mark() {
        let policy = RecyclePolicy {
            after_events: 0,
            ..POLICY
        };
        let mut life = Life::default();
        // 75 of 100 is not above 75%.
        assert_eq!(life.after_delivery(1, 75, 100, &policy), None);
        assert_eq!(life.after_delivery(1, 75, 100, &policy), None);
        assert_eq!(life.after_delivery(1, 76, 100, &policy), None);
        // Dropping below resets the count of deliveries in a row.
        assert_eq!(life.after_delivery(1, 10, 100, &policy), None);
        assert_eq!(life.after_delivery(1, 76, 100, &policy), None);
        assert_eq!(
            life.after_delivery(1, 90, 100, &policy),
            Some(RecycleReason::Memory)
        );
        // Off at 0 percent; at least one delivery above when 0 in a row.
        let off = RecyclePolicy {
            memory_percent: 0,
            ..policy
        };
        let mut life = Life::default();
        for _ in 0..10 {
            assert_eq!(life.after_delivery(1, 100, 100, &off), None);
        }
        let at_once = RecyclePolicy {
            high_water_deliveries: 0,
            ..policy
        };
        assert_eq!(
            Life::default().after_delivery(1, 80, 100, &at_once),
            Some(RecycleReason::Memory)
        );
        // Near u64::MAX the arithmetic does not overflow.
        assert_eq!(
            Life::default().after_delivery(1, u64::MAX, u64::MAX, &at_once),
            Some(RecycleReason::Memory)
        );
    }

    #[test]
    fn pauses_between_slot_attempts_grow_to_a_ceiling() {
        let mut pause = Duration::from_millis(1);
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(pause.as_millis());
            pause = next_pause(pause);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 50, 50]);
    }
}
