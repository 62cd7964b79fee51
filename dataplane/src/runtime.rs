//! The thread-per-core runtime: pinned workers, each owning a shard of streams, fed by
//! SPSC rings, adopting policy snapshots at batch boundaries, handing scheduled
//! packets to an embedder-supplied egress (DESIGN T1-T6).
//!
//! ```text
//!  transport threads          worker threads (qos-worker-N, pinned)        embedder
//!  Producer 0 ──ring──┐
//!  Producer 1 ──ring──┼──▶ worker 0: Scheduler (shard 0) ──▶ Egress 0 ──▶ wire
//!                     └──▶ worker 1: Scheduler (shard 1) ──▶ Egress 1 ──▶ wire
//!  Dataplane (control thread): publish_policy ─arc-swap─▶ every worker, once per batch
//!                              stats() ◀─ per-worker counters (Relaxed, single writer)
//!                              take_histograms() ◀─▶ mailbox exchange per worker
//! ```
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use qos_dataplane::runtime::{Dataplane, Egress, Outbox, Pinning, StopMode};
//! use qos_dataplane::sched::{Policy, StreamConfig};
//!
//! struct Count(Arc<Mutex<Vec<u64>>>);
//! impl Egress<u64> for Count {
//!     fn send(&mut self, _now_ns: u64, out: &mut Outbox<'_, u64>) {
//!         let mut sent = self.0.lock().unwrap();
//!         while let Some(d) = out.pop() {
//!             sent.push(d.packet);
//!         }
//!     }
//! }
//!
//! let sent = Arc::new(Mutex::new(Vec::new()));
//! let s = sent.clone();
//! let (dataplane, mut producers) = Dataplane::<u64>::builder()
//!     .workers(2)
//!     .pinning(Pinning::Off)
//!     .policy(Arc::new(Policy::default()))
//!     .build(move |_worker| Count(s.clone()))?;
//! let mut tx = producers.pop().unwrap();
//! let stream = tx.open(42, StreamConfig::with_priority(6))?;
//! for i in 0..100 {
//!     tx.enqueue(stream, i, 1200).unwrap();
//! }
//! drop(tx); // a graceful stop waits for the producers to be dropped
//! let report = dataplane.shutdown(StopMode::Drain)?;
//! assert!(report.is_conserved());
//! assert_eq!(*sent.lock().unwrap(), (0..100).collect::<Vec<u64>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
pub mod clock;
mod config;
mod counters;
mod doorbell;
mod egress;
mod gate;
mod link;
#[allow(unsafe_code)]
pub mod mailbox;
mod producer;
mod report;
pub mod shm;
mod snapshot;
#[allow(unsafe_code)]
pub(crate) mod sync;
mod worker;

use std::sync::OnceLock;
use std::time::Duration;

use thiserror::Error;

pub use builder::DataplaneBuilder;
pub use clock::Clock;
pub use config::{BuildError, IdleStrategy, Pinning, RuntimeConfig, check_burst};
pub use counters::WorkerStats;
pub use doorbell::Doorbell;
pub use egress::{DiscardReason, Discarded, Egress, Outbox};
pub use producer::{ControlError, EnqueueError, Producer, StreamHandle};
pub use report::{StreamEntry, StreamReport, WindowCounts};
pub use snapshot::{SnapshotCell, SnapshotReader};

/// What the loom models (`loom-tests/`, DESIGN T5) reach beyond the public API.
#[cfg(qos_loom)]
#[doc(hidden)]
pub mod loom_access {
    pub use super::counters::Counters;
    pub use super::gate::PushGate;
    pub use super::link::RateLedger;
}

use crate::sched::Event;
use crate::sched::Policy;
use counters::Counters;
use mailbox::{MailboxReceiver, MailboxSender};
use sync::{AtomicBool, AtomicU64, Ordering};
use worker::Hists;

/// What a stopping worker does with packets still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Keep scheduling (at the policy's pace) until every queue is empty, then stop;
    /// past the drain timeout, discard the rest as [`Discard`](Self::Discard) does
    /// (queued packets counted `closed`, dequeued-but-unsent ones `shutdown`). The
    /// timeout is checked between loop iterations: it cannot interrupt an
    /// [`Egress::send`] in progress, so an egress that blocks holds the stop that long.
    Drain,
    /// Discard what is queued once every producer is dropped (or the drain timeout
    /// passes; until then workers keep serving): queued packets are counted as dropped
    /// `closed`, dequeued-but-unsent ones as `shutdown`.
    Discard,
}

const RUNNING: u64 = 0;
const DRAIN: u64 = 1;
const DISCARD: u64 = 2;

/// State shared by the workers, the producers and the control side.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This dataplane's number among those of the process (handles carry it).
    pub(crate) instance: u32,
    pub(crate) workers: Vec<WorkerShared>,
    pub(crate) clock: Clock,
    policy: SnapshotCell<Policy>,
    pub(crate) link: link::LinkBoard,
    stop: AtomicU64,
    stop_deadline: AtomicU64,
    /// A [`DrainCut`] cut the stop's drain short.
    drain_cut: AtomicBool,
    /// Tiers shed at ingress (bit `t` = tier `t` of the running policy; O5).
    shed_tiers: AtomicU64,
    /// Per producer: packets handed back because a ring was full.
    ring_full: Vec<counters::Gauge>,
    /// Per producer: the last-read handshake with stopping workers (`gate.rs`).
    pub(crate) gates: Vec<gate::PushGate>,
}

/// One worker's shared state.
#[derive(Debug)]
pub(crate) struct WorkerShared {
    pub(crate) bell: OnceLock<Doorbell>,
    pub(crate) counters: Counters,
    /// Producers must stop pushing to it: its thread ended, or its egress panicked.
    gone: AtomicBool,
    panicked: AtomicBool,
    /// The link rate this worker holds in the ledger (for release when it ends).
    granted: AtomicU64,
}

impl WorkerShared {
    fn new() -> Self {
        Self {
            bell: OnceLock::new(),
            counters: Counters::new(),
            gone: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            granted: AtomicU64::new(0),
        }
    }

    pub(crate) fn mark_gone(&self) {
        // Release: partner of the Acquire loads in `is_closed` / `Dataplane::stats`.
        self.gone.store(true, Ordering::Release);
    }

    /// Whether the worker is closed to producers (ended, or failed and only sinking).
    pub(crate) fn is_gone(&self) -> bool {
        // Acquire: partner of `mark_gone` / `mark_panicked`.
        self.gone.load(Ordering::Acquire)
    }

    /// Records the rate the worker holds; returns the previous value.
    pub(crate) fn set_granted(&self, rate: u64) -> u64 {
        // Relaxed: only the worker writes it while alive; its exit guard swaps it on
        // the same thread.
        self.granted.swap(rate, Ordering::Relaxed)
    }

    /// Marks the worker panicked, and gone for producers (their pushes to it return
    /// `Closed`): its thread unwound, or its egress panicked and it only discards now.
    pub(crate) fn mark_panicked(&self) {
        // Release: as `mark_gone`. Gone first: whoever reads the state as Panicked
        // then finds the worker closed too.
        self.gone.store(true, Ordering::Release);
        self.panicked.store(true, Ordering::Release);
    }
}

impl Shared {
    /// `true` once producers must stop pushing to worker `w`.
    #[inline]
    pub(crate) fn is_closed(&self, w: usize) -> bool {
        // Relaxed stop load: producers call this inside their gate, after its SeqCst
        // fence, which orders it against a stopping worker's last read (`gate.rs`).
        // Acquire gone load: partner of `mark_gone` / `mark_panicked`.
        self.stop.load(Ordering::Relaxed) != RUNNING || self.workers[w].gone.load(Ordering::Acquire)
    }

    /// Wakes worker `w` if it is parked.
    #[inline]
    pub(crate) fn ring(&self, w: usize) {
        if let Some(bell) = self.workers[w].bell.get() {
            bell.ring();
        }
    }

    pub(crate) fn stop_mode(&self) -> Option<StopMode> {
        // Acquire: partner of `shutdown`'s Release store (the deadline is stored first).
        match self.stop.load(Ordering::Acquire) {
            DRAIN => Some(StopMode::Drain),
            DISCARD => Some(StopMode::Discard),
            _ => None,
        }
    }

    /// The tiers to shed (bit per tier index).
    pub(crate) fn shed_tiers(&self) -> u64 {
        // Relaxed: a lone word; a worker adopting it one iteration late is fine.
        self.shed_tiers.load(Ordering::Relaxed)
    }

    pub(crate) fn stop_deadline(&self) -> u64 {
        // Acquire: partner of `DrainCut::cut`'s Release store (its flag is then seen by
        // `drain_was_cut`); the deadline `shutdown` sets is published by its Release
        // store of `stop`. A worker reading a cut one iteration late only discards one
        // iteration later.
        self.stop_deadline.load(Ordering::Acquire)
    }

    /// Whether a `DrainCut` was made (read after `stop_deadline` saw its deadline).
    pub(crate) fn drain_was_cut(&self) -> bool {
        // Relaxed: ordered by the Acquire load of the deadline before it.
        self.drain_cut.load(Ordering::Relaxed)
    }
}

/// Cuts a draining stop short from another thread: what a daemon's second SIGTERM
/// does. From [`Dataplane::drain_cut`]; cloneable and `Send`.
///
/// [`DrainCut::cut`] moves the drain deadline to now: each worker then discards what
/// it still holds (ring contents and queued packets, counted as [`StopMode::Drain`]
/// counts them past its timeout) and ends; [`Dataplane::shutdown`] returns soon after,
/// with [`ShutdownReport::drain_cut`] set. A cut before the stop makes the coming stop
/// discard at once; on a running dataplane it changes nothing else.
#[derive(Clone)]
pub struct DrainCut {
    shared: sync::Arc<Shared>,
}

impl std::fmt::Debug for DrainCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainCut")
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl DrainCut {
    /// Cuts the drain short (idempotent).
    pub fn cut(&self) {
        // Release: a worker that sees the deadline (Acquire) sees the flag too; the
        // bells below wake parked workers to read it.
        self.shared.drain_cut.store(true, Ordering::Relaxed);
        self.shared.stop_deadline.store(0, Ordering::Release);
        for w in 0..self.shared.workers.len() {
            self.shared.ring(w);
        }
    }

    /// Whether [`DrainCut::cut`] was called.
    pub fn is_cut(&self) -> bool {
        self.shared.drain_cut.load(Ordering::Relaxed)
    }
}

/// How workers were placed on cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinningReport {
    /// The pinning policy asked for.
    pub policy: Pinning,
    /// Core of each worker (`None`: not pinned).
    pub cores: Vec<Option<usize>>,
    /// `true` when several workers share a core (`Wrap` with more workers than cores).
    pub shared_cores: bool,
}

/// One worker's health, as seen by the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Running; its heartbeat is recent.
    Running,
    /// Its thread ended normally (after `shutdown`).
    Stopped,
    /// Its egress panicked (the worker caught it, and only discards now, counted), or
    /// its thread did.
    Panicked,
}

/// Why a stop was not clean.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A worker's egress panicked (caught: its counters balance), or its thread did; the
    /// report still holds every worker's last counters.
    #[error("worker {worker} panicked: {message}")]
    WorkerPanicked {
        /// Worker index.
        worker: usize,
        /// The panic message.
        message: String,
        /// Counters of every worker at the end.
        report: Box<ShutdownReport>,
    },
}

/// Every worker's final counters.
#[derive(Debug)]
pub struct ShutdownReport {
    /// Final counters, by worker.
    pub workers: Vec<WorkerStats>,
    /// By worker, what its histograms recorded after the last
    /// [`Dataplane::take_histograms`] (`None` for a worker whose thread panicked; one
    /// whose egress panicked still hands them over): with these,
    /// a reader's histograms cover every packet the dataplane scheduled.
    pub histograms: Vec<Option<Box<WorkerHistograms>>>,
    /// By worker, the stream reports the reader had not received, oldest first,
    /// ending with one walked at exit over the final counters (none walked at exit
    /// for a worker whose thread panicked, or whose reports were never asked for):
    /// with these, the report windows ([`StreamReport::rest`], [`StreamEntry::window`])
    /// add up to the final counters. After a worker's thread panicked they do not:
    /// what it did since its last report is lost with it. A panic in the embedder's
    /// [`Egress`] is caught instead (see [`WorkerStats::egress_failed`]), and leaves
    /// both the counters and the reports whole.
    pub reports: Vec<Vec<StreamReport>>,
    /// A [`DrainCut`] cut the drain short: a worker still holding packets (or reading
    /// its rings) discarded them before its drain timeout. `false` when the cut came
    /// after every drain had finished, or the stop was a [`StopMode::Discard`].
    pub drain_cut: bool,
}

impl ShutdownReport {
    /// S11 across rings, schedulers and egress, for every worker: each packet taken
    /// from a ring was sent or discarded with a counted reason (handed to the egress);
    /// nothing is left queued, pending or awaiting reclaim.
    pub fn is_conserved(&self) -> bool {
        self.workers.iter().all(|w| {
            w.is_conserved()
                && w.shard.totals.queued == 0
                && w.pending == 0
                && w.shard.awaiting_reclaim == 0
        })
    }

    /// Packets taken from the rings, all workers.
    pub fn taken(&self) -> u64 {
        self.workers.iter().map(|w| w.taken).sum()
    }

    /// Packets sent, all workers.
    pub fn sent(&self) -> u64 {
        self.workers.iter().map(|w| w.sent).sum()
    }

    /// Packets discarded with a reason, all workers.
    pub fn discarded(&self) -> u64 {
        self.workers.iter().map(|w| w.discarded).sum()
    }
}

/// Which stream an event is about, for logs: the key it was opened with and its
/// priority when the event was forwarded (`None` if it was closed meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTag {
    /// The key the stream was opened with.
    pub key: u64,
    /// Its priority.
    pub priority: Option<crate::sched::Priority>,
}

/// What one worker recorded since the previous exchange (T4, O4).
#[derive(Debug)]
pub struct WorkerHistograms {
    /// Sojourn (enqueue to dequeue) in ns, by priority.
    pub sojourn: [hdrhistogram::Histogram<u64>; crate::sched::policy::PRIORITIES],
    /// Scheduling cost: the duration of each loop iteration that moved packets, in ns
    /// (take a batch, schedule, hand to egress, publish).
    pub iteration_ns: hdrhistogram::Histogram<u64>,
}

impl WorkerHistograms {
    /// Adds `other`'s counts (same bounds on both sides, so nothing is refused).
    pub fn add(&mut self, other: &WorkerHistograms) {
        for (a, b) in self.sojourn.iter_mut().zip(&other.sojourn) {
            let _ = a.add(b);
        }
        let _ = self.iteration_ns.add(&other.iteration_ns);
    }

    pub(crate) fn empty() -> Box<Self> {
        Box::new(Self {
            sojourn: std::array::from_fn(|_| crate::sched::new_sojourn_histogram()),
            iteration_ns: crate::sched::new_sojourn_histogram(),
        })
    }
}

/// The control side's end of one worker's mailbox exchange: an empty value goes to
/// the worker, the filled one comes back.
struct Exchange<T> {
    to_worker: MailboxSender<T>,
    from_worker: MailboxReceiver<T>,
    /// An empty value was sent and its filled counterpart not yet received.
    requested: bool,
}

impl<T: Send> Exchange<T> {
    /// Hands `make(w)` to every worker that has no request outstanding, then waits
    /// until `timeout` for the answers.
    fn round(
        all: &mut [Self],
        shared: &Shared,
        timeout: Duration,
        mut make: impl FnMut(usize) -> T,
    ) -> Vec<Option<T>> {
        for (w, x) in all.iter_mut().enumerate() {
            if !x.requested && x.to_worker.put(make(w)).is_ok() {
                x.requested = true;
                shared.ring(w);
            }
        }
        let clock = shared.clock;
        let deadline = clock.now_ns().saturating_add(worker::duration_ns(timeout));
        let mut out: Vec<Option<T>> = (0..all.len()).map(|_| None).collect();
        loop {
            for (w, x) in all.iter_mut().enumerate() {
                if out[w].is_none()
                    && let Some(full) = x.from_worker.take()
                {
                    x.requested = false;
                    out[w] = Some(full);
                }
            }
            let waiting = out
                .iter()
                .zip(all.iter())
                .any(|(o, x)| o.is_none() && x.requested);
            if !waiting || clock.now_ns() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// A running dataplane: the control side's handle (publish policies, read counters and
/// histograms, stop). Built by [`Dataplane::builder`].
pub struct Dataplane<P> {
    shared: sync::Arc<Shared>,
    threads: Vec<Option<std::thread::JoinHandle<Option<worker::Exit>>>>,
    hists: Vec<Exchange<Hists>>,
    reports: Vec<Exchange<Box<StreamReport>>>,
    events: Vec<rtrb::Consumer<worker::EventItem>>,
    pinning: PinningReport,
    config: RuntimeConfig,
    drain_timeout: Duration,
    _packets: std::marker::PhantomData<fn(P)>,
}

impl<P> std::fmt::Debug for Dataplane<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("workers", &self.threads.len())
            .field("pinning", &self.pinning)
            .finish()
    }
}

impl<P: Send + 'static> Dataplane<P> {
    /// A builder with the defaults of [`RuntimeConfig`] and the reference policy.
    pub fn builder() -> DataplaneBuilder<P> {
        DataplaneBuilder::new()
    }

    /// Worker count.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// How workers were placed on cores.
    pub fn pinning(&self) -> &PinningReport {
        &self.pinning
    }

    /// The runtime settings in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Nanoseconds on the dataplane's clock (the time base of heartbeats and egress).
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// A handle that cuts a draining stop short from another thread (a second signal
    /// to a daemon already draining): see [`DrainCut`].
    pub fn drain_cut(&self) -> DrainCut {
        DrainCut {
            shared: self.shared.clone(),
        }
    }

    /// Publishes `policy` (T3): every worker adopts it at its next batch boundary.
    /// Never waits for a worker. A version older than the one published is refused
    /// (C2); the same policy again is a no-op, and a different one under the same
    /// version is refused ([`PublishError::VersionConflict`]). A link whose burst, split between the
    /// workers, would not hold one largest packet per worker is refused too (each
    /// worker would otherwise pass such packets above its rate).
    pub fn publish_policy(&self, policy: std::sync::Arc<Policy>) -> Result<(), PublishError> {
        let current = self.shared.policy.current();
        if policy.version() < current.version() {
            return Err(PublishError::StaleVersion {
                offered: policy.version(),
                current: current.version(),
            });
        }
        config::check_burst(&policy, self.workers()).map_err(|e| match e {
            BuildError::BurstTooSmall {
                burst,
                workers,
                max_packet,
            } => PublishError::BurstTooSmall {
                burst,
                workers,
                max_packet,
            },
            _ => unreachable!("check_burst only reports BurstTooSmall"),
        })?;
        if policy.version() == current.version() {
            // C2: re-applying the running policy is a no-op; another policy under the
            // same version is a mistake to name, not to ignore.
            if *policy == *current {
                return Ok(());
            }
            return Err(PublishError::VersionConflict {
                version: policy.version(),
            });
        }
        self.shared.policy.publish(policy);
        for w in 0..self.workers() {
            self.shared.ring(w);
        }
        Ok(())
    }

    /// T6: the sum of the pacing rates the workers hold, in bit/s (0 without a link).
    /// Never above the link rate, except for up to one link period after a policy
    /// lowers the rate (workers give back their excess at their next period).
    pub fn link_granted_bps(&self) -> u64 {
        self.shared.link.ledger.granted()
    }

    /// The policy last published.
    pub fn policy(&self) -> std::sync::Arc<Policy> {
        self.shared.policy.current()
    }

    /// Every worker's latest published counters (never stops a worker).
    pub fn stats(&self) -> Vec<WorkerStats> {
        (0..self.workers())
            .map(|w| self.shared.workers[w].counters.read(w))
            .collect()
    }

    /// Per-worker state: running, stopped, or panicked.
    pub fn worker_states(&self) -> Vec<WorkerState> {
        self.shared
            .workers
            .iter()
            .map(|w| {
                // Acquire: partners of `mark_panicked` / `mark_gone`.
                if w.panicked.load(Ordering::Acquire) {
                    WorkerState::Panicked
                } else if w.gone.load(Ordering::Acquire) {
                    WorkerState::Stopped
                } else {
                    WorkerState::Running
                }
            })
            .collect()
    }

    /// Age of each worker's heartbeat, in ns (an idle worker refreshes it at least
    /// every `park_timeout`).
    pub fn heartbeat_age_ns(&self) -> Vec<u64> {
        let now = self.now_ns();
        self.stats()
            .iter()
            .map(|s| now.saturating_sub(s.heartbeat_ns))
            .collect()
    }

    /// The version each worker runs (C2).
    pub fn policy_versions(&self) -> Vec<u64> {
        self.stats().iter().map(|s| s.policy_version).collect()
    }

    /// T4: collects each worker's sojourn and iteration-cost histograms (recorded
    /// since the previous exchange) by handing it an empty set and taking its full one
    /// back, waiting at most `timeout` for workers to answer. A worker that has not
    /// answered yet gives `None`; its histograms are not lost, they come with a later
    /// call.
    pub fn take_histograms(&mut self, timeout: Duration) -> Vec<Option<Box<WorkerHistograms>>> {
        Exchange::round(&mut self.hists, &self.shared, timeout, |_| {
            WorkerHistograms::empty()
        })
    }

    /// Per-stream report of every worker (O1, O6): its `limit` busiest streams (by
    /// packets offered since its previous report, then over their lives) with their
    /// counters, windows and keys, the windows of the rest per priority, and its open
    /// stream count. Collect every report a call returns: the windows add up only over
    /// all of them (and those of [`ShutdownReport::reports`]). Each
    /// worker walks its table 1,024 slots per loop iteration, so this costs a worker
    /// little even at a million streams; waits at most `timeout` (a worker still
    /// walking gives `None`, and its report comes with a later call). The memory is
    /// reserved up front, on this thread: a `limit` above a worker's open streams is
    /// reduced to them plus 1,024 (streams opened since), so `usize::MAX` asks for
    /// every stream.
    pub fn stream_reports(
        &mut self,
        limit: usize,
        timeout: Duration,
    ) -> Vec<Option<Box<StreamReport>>> {
        // Bounded by what a worker holds, not by its table's size: `usize::MAX`
        // overflowed the reservation, 2^40 aborted the process, and a table of 2^31
        // slots would still ask for hundreds of GB.
        let open: Vec<usize> = self
            .stats()
            .iter()
            .map(|s| s.shard.open_streams as usize)
            .collect();
        let max_streams = self.config.scheduler.max_streams as usize;
        Exchange::round(&mut self.reports, &self.shared, timeout, |w| {
            let held = open.get(w).copied().unwrap_or(0).saturating_add(1_024);
            StreamReport::empty(w, limit.min(held).min(max_streams))
        })
    }

    /// Degrade (O5): sheds at ingress every packet of the tiers in `mask` (bit `t` =
    /// tier `t` of the running policy), counted per priority in
    /// [`WorkerStats::shed`] and handed to [`Egress::discard`] with
    /// [`DiscardReason::Shed`]. `0` stops shedding. Queued packets are not touched.
    /// Workers adopt it at their next iteration.
    pub fn set_shed_tiers(&self, mask: u64) {
        // Relaxed: a lone word (partner: `Shared::shed_tiers`); then wake the workers.
        self.shared.shed_tiers.store(mask, Ordering::Relaxed);
        for w in 0..self.workers() {
            self.shared.ring(w);
        }
    }

    /// The tiers being shed (see [`Dataplane::set_shed_tiers`]).
    pub fn shed_tiers(&self) -> u64 {
        self.shared.shed_tiers()
    }

    /// Per producer: packets handed back because a ring to a worker was full
    /// (backpressure at ingress; a hazard when it persists, O5).
    pub fn ring_full_events(&self) -> Vec<u64> {
        self.shared
            .ring_full
            .iter()
            .map(counters::Gauge::read)
            .collect()
    }

    /// Takes the scheduler events (backpressure signals, disconnects, promotions)
    /// every worker forwarded since the last call, as `(worker, event)`.
    pub fn drain_events(&mut self, mut f: impl FnMut(usize, Event)) {
        self.drain_keyed_events(|w, e, _| f(w, e));
    }

    /// As [`Dataplane::drain_events`], with the key and priority of the event's stream
    /// (`None` for events about no stream, such as budget violations).
    pub fn drain_keyed_events(&mut self, mut f: impl FnMut(usize, Event, Option<StreamTag>)) {
        for (w, rx) in self.events.iter_mut().enumerate() {
            while let Ok((e, key)) = rx.pop() {
                f(w, e, key);
            }
        }
    }

    /// Stops every worker and joins it. Producers should be dropped first (or soon):
    /// workers take what producers push until every producer is dropped or the drain
    /// timeout passes, so nothing pushed is stranded. Then `Drain` schedules the rest
    /// out at the policy's pace, `Discard` discards it (counted). Returns every worker's
    /// final counters; a worker that panicked makes it an error (the others still stop
    /// cleanly and the report is in the error).
    pub fn shutdown(mut self, mode: StopMode) -> Result<ShutdownReport, RuntimeError> {
        let deadline = self
            .now_ns()
            .saturating_add(worker::duration_ns(self.drain_timeout));
        // Relaxed: published by the Release store of `stop` just below. The minimum: a
        // `DrainCut` may have set it to 0 already.
        self.shared
            .stop_deadline
            .fetch_min(deadline, Ordering::Relaxed);
        let code = match mode {
            StopMode::Drain => DRAIN,
            StopMode::Discard => DISCARD,
        };
        // Release: partner of `stop_mode`'s Acquire load.
        self.shared.stop.store(code, Ordering::Release);
        let mut panic = None;
        let mut drain_cut = false;
        let mut histograms = Vec::with_capacity(self.threads.len());
        let mut reports = Vec::with_capacity(self.threads.len());
        for w in 0..self.threads.len() {
            self.shared.ring(w);
            let exit = match self.threads[w].take().map(std::thread::JoinHandle::join) {
                Some(Ok(Some(mut exit))) => {
                    // The egress panicked and the worker caught it: it discarded what it
                    // held, counted, and reports the panic here.
                    if let Some(payload) = exit.egress_panic.take() {
                        panic.get_or_insert((w, panic_message(payload.as_ref())));
                    }
                    drain_cut |= exit.cut;
                    Some(exit)
                }
                Some(Ok(None)) => None,
                Some(Err(payload)) => {
                    panic.get_or_insert((w, panic_message(payload.as_ref())));
                    None
                }
                None => None,
            };
            let (mut last, late) = match exit {
                Some(e) => (Some(e.hists), e.reports),
                None => (None, Vec::new()),
            };
            // A report the worker completed that the reader has not collected comes
            // before the worker's own late ones.
            let mut mine: Vec<StreamReport> = self
                .reports
                .get_mut(w)
                .and_then(|x| x.from_worker.take())
                .map(|r| *r)
                .into_iter()
                .collect();
            mine.extend(late);
            reports.push(mine);
            // A set the worker filled and the reader has not collected yet.
            if let (Some(last), Some(uncollected)) = (
                last.as_mut(),
                self.hists.get_mut(w).and_then(|x| x.from_worker.take()),
            ) {
                last.add(&uncollected);
            }
            histograms.push(last);
        }
        let report = ShutdownReport {
            workers: self.stats(),
            histograms,
            reports,
            drain_cut,
        };
        match panic {
            None => Ok(report),
            Some((worker, message)) => Err(RuntimeError::WorkerPanicked {
                worker,
                message,
                report: Box::new(report),
            }),
        }
    }
}

impl<P> Drop for Dataplane<P> {
    /// Dropping a running dataplane stops it discarding (use `shutdown` for a report).
    fn drop(&mut self) {
        if self.threads.iter().all(Option::is_none) {
            return;
        }
        self.shared.stop_deadline.store(0, Ordering::Relaxed);
        // Release: as in `shutdown`.
        self.shared.stop.store(DISCARD, Ordering::Release);
        for w in 0..self.threads.len() {
            self.shared.ring(w);
            if let Some(t) = self.threads[w].take() {
                let _ = t.join();
            }
        }
    }
}

/// Why [`Dataplane::publish_policy`] refused a policy; the running one stays.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// A policy older than the one running was offered (C2).
    #[error("policy.version: {offered}, expected >= {current} (the version running)")]
    StaleVersion {
        /// The version offered.
        offered: u64,
        /// The version published.
        current: u64,
    },
    /// Another policy than the running one, under the running one's version: a changed
    /// policy needs a higher version (C2). Re-publishing the running policy is a no-op.
    #[error(
        "policy.version: {version} is running with different content, expected a version above {version}"
    )]
    VersionConflict {
        /// The version offered (and running).
        version: u64,
    },
    /// The link's burst cannot give every worker a bucket of one largest packet.
    #[error(
        "policy.link.burst_bytes: {burst}, expected >= workers ({workers}) * max_packet_bytes ({max_packet})"
    )]
    BurstTooSmall {
        /// The policy's burst.
        burst: u64,
        /// Worker count.
        workers: usize,
        /// The policy's largest packet.
        max_packet: u32,
    },
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
