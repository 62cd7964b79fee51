//! The worker loop (STYLE 3): bounded iterations over one shard.
//!
//! Each iteration reads the clock once, adopts a new policy snapshot if one was
//! published (a batch boundary), takes at most `ingress_batch` messages from each ring,
//! enqueues them, hands dropped packets to the egress's `discard`, dequeues at most
//! `egress_batch` packets and offers them to the egress, exchanges histograms if the
//! reader asked, and publishes its counters. It never drains anything "until empty".
//! After warm-up nothing here allocates, locks or makes a syscall per packet; the idle
//! strategy's park is the only blocking call.

use std::collections::VecDeque;
use std::sync::mpsc;

use crossbeam_utils::Backoff;
use hdrhistogram::Histogram;

use super::StreamTag;
use super::config::{BuildError, IdleStrategy, RuntimeConfig};
use super::counters::WorkerStats;
use super::doorbell::Doorbell;
use super::egress::{DiscardReason, Discarded, Egress, Outbox};
use super::mailbox::{MailboxReceiver, MailboxSender};
use super::producer::Msg;
use super::report::{SLOTS_PER_ITERATION, StreamReport, Windows};
use super::snapshot::SnapshotReader;
use super::sync::Arc;
use super::{Shared, StopMode};
use crate::sched::policy::{MAX_TIERS, PRIORITIES};
use crate::sched::{
    BatchEnd, Dequeued, Event, LinkShare, Policy, Priority, Rejected, Rejection, Scheduler,
    StreamId,
};

/// A worker's histograms, moved by exchange (T4).
pub(crate) type Hists = Box<super::WorkerHistograms>;

/// What a worker thread hands back when it ends.
pub(crate) struct Exit {
    /// What its histograms recorded since the last exchange.
    pub(crate) hists: Hists,
    /// Stream reports the reader has not received, oldest first: one the mailbox
    /// could not take, then a final one walked at exit (when the reader ever asked
    /// for reports), so the report windows add up to the final counters.
    pub(crate) reports: Vec<StreamReport>,
    /// The payload of a panic the egress raised (caught; `shutdown` reports it).
    pub(crate) egress_panic: Option<Box<dyn std::any::Any + Send>>,
    /// A `DrainCut` ended its drain before it was done.
    pub(crate) cut: bool,
}

/// One ring from one producer.
struct Inbox<P> {
    rx: rtrb::Consumer<Msg<P>>,
}

/// Decodes a shared-memory packet payload into the embedder's packet type; `None`
/// refuses it (counted `shm_rejected`).
pub(crate) type ShmDecode<P> = Box<dyn FnMut(&[u8]) -> Option<P> + Send>;

/// A shared-memory ring from another process (T2).
pub(crate) struct ShmInbox<P> {
    pub(crate) rx: qos_shm_ring::Consumer,
    pub(crate) decode: ShmDecode<P>,
    pub(crate) buf: Vec<u8>,
    /// The peer abandoned the ring (or broke the protocol) and it is drained.
    pub(crate) done: bool,
}

/// Everything a worker thread is started with.
pub(crate) struct WorkerParts<P, E> {
    pub(crate) index: usize,
    pub(crate) sched: Scheduler<P>,
    pub(crate) inboxes: Vec<rtrb::Consumer<Msg<P>>>,
    pub(crate) shm: Vec<ShmInbox<P>>,
    pub(crate) egress: E,
    pub(crate) hist_in: MailboxReceiver<Hists>,
    pub(crate) hist_out: MailboxSender<Hists>,
    pub(crate) report_in: MailboxReceiver<Box<StreamReport>>,
    pub(crate) report_out: MailboxSender<Box<StreamReport>>,
    pub(crate) events: rtrb::Producer<EventItem>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: RuntimeConfig,
    pub(crate) policy: SnapshotReader<Policy>,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) strict: bool,
    pub(crate) started: mpsc::Sender<Result<bool, BuildError>>,
}

struct Worker<P, E> {
    index: usize,
    sched: Scheduler<P>,
    inboxes: Vec<Inbox<P>>,
    shm: Vec<ShmInbox<P>>,
    /// Streams opened by each source (rtrb inboxes first, then shm inboxes), indexed by
    /// the source's local stream number.
    tables: Vec<Vec<Option<StreamId>>>,
    egress: E,
    outbox: VecDeque<Dequeued<P>>,
    batch: Vec<Dequeued<P>>,
    burst: Vec<(StreamId, P, u32)>,
    msgs: Vec<Msg<P>>,
    rejected: Vec<Rejected<P>>,
    hist_in: MailboxReceiver<Hists>,
    hist_out: MailboxSender<Hists>,
    outgoing: Option<Hists>,
    /// Duration of each iteration that moved packets (scheduling cost, O4).
    iteration_ns: Histogram<u64>,
    report_in: MailboxReceiver<Box<StreamReport>>,
    report_out: MailboxSender<Box<StreamReport>>,
    /// The stream report being walked, and whether its walk is complete.
    report: Option<(Box<StreamReport>, bool)>,
    /// The size of the last report asked for (`None`: never asked).
    report_limit: Option<usize>,
    /// The exit report of a discarding stop, built from the streams it closed.
    exit_report: Option<Box<StreamReport>>,
    /// What the previous report walk saw per slot (report windows).
    windows: Windows,
    /// Per stream slot: the key it was opened with.
    keys: Vec<u64>,
    /// Per stream slot: packets shed at ingress (degrade).
    shed: Vec<u64>,
    /// Priorities whose tier is shed now (bit per priority).
    shed_prios: u8,
    events: rtrb::Producer<EventItem>,
    shared: Arc<Shared>,
    config: RuntimeConfig,
    policy: SnapshotReader<Policy>,
    /// The snapshot last adopted (compared by pointer, so republishing is cheap).
    adopted: std::sync::Arc<Policy>,
    stats: WorkerStats,
    next_publish: u64,
    /// Link sharing state while the policy sets a link rate (T6).
    link: Option<LinkState>,
    /// A panic the egress raised: from then on the worker calls it no more, and
    /// discards (counted `egress_failed`) what reaches it until the dataplane stops.
    egress_panic: Option<Box<dyn std::any::Any + Send>>,
    /// The worker has discarded what it held after its egress panicked.
    sunk: bool,
    /// A `DrainCut` ended its drain before it was done.
    cut: bool,
}

/// A worker's side of link sharing (T6, see `link.rs`).
struct LinkState {
    /// Pacing rate this worker holds in the ledger, bit/s.
    mine: u64,
    weights: [u64; MAX_TIERS],
    next_at: u64,
    last_at: u64,
    /// Whether `last_packets` and `last_bytes` hold a reading yet (the first reading,
    /// when the link is set, only records the counters: what came before is not a rate).
    primed: bool,
    /// Cumulative packets and bytes offered per tier at `last_at`.
    last_packets: [u64; MAX_TIERS],
    last_bytes: [u64; MAX_TIERS],
    /// Mean size of the packets offered in the latest period that had any, per tier.
    packet_bytes: [u64; MAX_TIERS],
    /// Smoothed arrival rate per tier, bit/s.
    ewma: [u64; MAX_TIERS],
    demands: Vec<[u64; MAX_TIERS]>,
    scratch: super::link::Scratch,
}

/// What one iteration did.
struct Progress {
    busy: bool,
    /// Packets are queued but pacing holds them until this time.
    wait_until: Option<u64>,
}

/// What an event ring holds: a scheduler event and, for a stream's, its key and
/// priority.
pub(crate) type EventItem = (Event, Option<StreamTag>);

/// The body of a worker thread. Returns when the dataplane stops.
/// Runs a worker until it stops; returns what its histograms recorded since the last
/// exchange and its last stream reports (so neither the last interval nor the last
/// window is lost at shutdown), `None` if it never started.
pub(crate) fn run<P: Send + 'static, E: Egress<P>>(parts: WorkerParts<P, E>) -> Option<Exit> {
    let pinned = match parts.core {
        Some(core) => core_affinity::set_for_current(core),
        None => false,
    };
    if parts.strict && !pinned {
        let _ = parts.started.send(Err(BuildError::NoSuchCore {
            worker: parts.index,
            core: parts.core.map_or(usize::MAX, |c| c.id),
            available: core_affinity::get_core_ids().map_or(0, |c| c.len()),
        }));
        return None;
    }
    let bell = Doorbell::for_current();
    if parts.shared.workers[parts.index].bell.set(bell).is_err() {
        unreachable!("each worker sets its own doorbell once");
    }
    let _guard = ExitGuard {
        shared: parts.shared.clone(),
        index: parts.index,
    };
    let started = parts.started.clone();
    let mut w = Worker::new(parts);
    // The first counters (policy version, capacities) are readable before `build`
    // returns.
    w.publish_all();
    let _ = started.send(Ok(pinned));
    drop(started);
    w.run();
    let reports = w.final_reports();
    Some(Exit {
        hists: w.final_histograms(),
        reports,
        egress_panic: w.egress_panic.take(),
        cut: w.cut,
    })
}

/// Marks the worker gone when its thread ends, and panicked if it ends by unwinding,
/// so producers stop pushing to it and the read API reports it.
struct ExitGuard {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let w = &self.shared.workers[self.index];
        // A stopped (or dead) worker paces nothing and asks for nothing: its part of the
        // link goes back, and the others no longer split a tier with it (a panicked
        // worker's last demand used to keep its share of each tier from the survivors).
        self.shared.link.publish(self.index, &[0; MAX_TIERS]);
        self.shared.link.ledger.release(w.set_granted(0));
        if std::thread::panicking() {
            w.mark_panicked();
        }
        w.mark_gone();
    }
}

impl<P: Send + 'static, E: Egress<P>> Worker<P, E> {
    fn new(p: WorkerParts<P, E>) -> Self {
        let adopted = p.sched.policy().clone();
        let n = p.config.egress_batch;
        let sources = p.inboxes.len() + p.shm.len();
        let mut stats = WorkerStats {
            worker: p.index,
            policy_version: adopted.version(),
            ..WorkerStats::default()
        };
        stats.shard = p.sched.shard_stats();
        Self {
            index: p.index,
            sched: p.sched,
            inboxes: p.inboxes.into_iter().map(|rx| Inbox { rx }).collect(),
            shm: p.shm,
            tables: vec![Vec::new(); sources],
            egress: p.egress,
            outbox: VecDeque::with_capacity(n),
            batch: Vec::with_capacity(n),
            burst: Vec::with_capacity(p.config.ingress_batch),
            msgs: Vec::with_capacity(p.config.ingress_batch),
            rejected: Vec::with_capacity(p.config.ingress_batch),
            hist_in: p.hist_in,
            hist_out: p.hist_out,
            outgoing: None,
            iteration_ns: crate::sched::new_sojourn_histogram(),
            report_in: p.report_in,
            report_out: p.report_out,
            report: None,
            report_limit: None,
            exit_report: None,
            windows: Windows::new(p.shared.clock.now_ns()),
            keys: Vec::new(),
            shed: Vec::new(),
            shed_prios: 0,
            events: p.events,
            shared: p.shared,
            config: p.config,
            policy: p.policy,
            adopted,
            stats,
            next_publish: 0,
            link: None,
            egress_panic: None,
            sunk: false,
            cut: false,
        }
    }

    fn run(&mut self) {
        let clock = self.shared.clock;
        let _ = self.share_link(clock.now_ns());
        let backoff = Backoff::new();
        let stall_ns = duration_ns(self.config.stall_budget);
        loop {
            let now = clock.now_ns();
            let progress = self.iteration(now);
            let after = clock.now_ns();
            if self.egress_panic.is_some() && !self.sunk {
                self.sink(after);
            }
            let took = after.saturating_sub(now);
            self.stats.iterations += 1;
            self.stats.heartbeat_ns = now;
            if took > stall_ns {
                self.stats.stalls += 1;
            }
            self.stats.max_iteration_ns = self.stats.max_iteration_ns.max(took);
            if progress.busy {
                self.iteration_ns.saturating_record(took);
            }
            self.publish(now);
            // The reading after the iteration: one can take long (a slow egress), and
            // neither the drain deadline nor the park may be measured from before it.
            if let Some(mode) = self.shared.stop_mode()
                && self.stopped(mode, after)
            {
                break;
            }
            if progress.busy {
                backoff.reset();
            } else {
                self.idle(&backoff, after, progress.wait_until);
            }
        }
        // The last batch may have dropped packets (AQM, expiry) after this iteration's
        // reclaim: they reach the egress before the worker ends, and so do its events.
        self.reclaim();
        self.forward_events();
        self.publish_all();
    }

    /// One bounded iteration at time `now`.
    fn iteration(&mut self, now: u64) -> Progress {
        let now = self.adopt_policy(now);
        // A raised link rate applies from a fresh clock reading: the rest of the
        // iteration (and the egress's timestamps) run at that time.
        let now = self.share_link(now);
        self.shed_prios = self.shed_priorities();
        // The last batch's drops first: their descriptors are room for ingress.
        let mut busy = self.reclaim();
        busy |= self.take_ingress(now);
        busy |= self.take_shm(now, false);
        busy |= self.reclaim();
        self.forward_events();
        let (sent, wait_until) = self.send(now);
        busy |= sent;
        self.exchange_histograms();
        busy |= self.step_report(now);
        Progress { busy, wait_until }
    }

    /// T3: looks at the snapshot once per batch; a new one governs the next decision.
    fn adopt_policy(&mut self, now: u64) -> u64 {
        let mut now = now;
        let current = self.policy.load();
        if !std::sync::Arc::ptr_eq(current, &self.adopted) {
            let before = std::mem::replace(&mut self.adopted, current.clone());
            // A priority moved to another tier brings its whole count of offered bytes
            // along: read afresh rather than take it for one period's arrivals.
            let remapped = before.tiers().len() != current.tiers().len()
                || (0..PRIORITIES as u8).any(|p| before.tier_of(p) != current.tier_of(p));
            if remapped && let Some(st) = self.link.as_mut() {
                st.primed = false;
            }
            self.sched.set_policy(now, current.clone());
            // Put this worker's part of the link back at once: `set_policy` installed
            // the whole link rate, which must not be credited for any time.
            if let (Some(st), Some(link)) = (&self.link, self.adopted.spec().link) {
                let burst = link.burst_bytes / self.shared.workers.len() as u64;
                apply_share(&mut self.sched, now, st.mine, burst, st.weights);
            }
            // The policy's own link is the whole link: put this worker's part back at
            // once (the next decision must not pace at the full rate).
            if let Some(st) = self.link.as_mut() {
                st.next_at = now;
            }
            now = self.share_link(now);
            self.stats.policy_version = self.adopted.version();
            self.shared.workers[self.index]
                .counters
                .publish(&self.stats);
        }
        now
    }

    /// Takes at most `ingress_batch` messages from each ring. Returns whether any.
    ///
    /// Backpressure: a worker takes no more messages than its descriptor pool has free
    /// descriptors, so producers see a full ring (and keep their packets) instead of
    /// the scheduler refusing them for want of descriptors.
    fn take_ingress(&mut self, now: u64) -> bool {
        let mut any = false;
        // Room is spent ring by ring, so several producers cannot overrun the pool; the
        // first ring read changes each iteration, so none gets all of a scarce room.
        let mut room = self.ingress_room();
        let rings = self.inboxes.len();
        let first = rotation(self.stats.iterations, rings);
        for i in (first..rings).chain(0..first) {
            let n = self.inboxes[i]
                .rx
                .slots()
                .min(self.config.ingress_batch)
                .min(room);
            if n == 0 {
                continue;
            }
            room -= n;
            any = true;
            let chunk = match self.inboxes[i].rx.read_chunk(n) {
                Ok(chunk) => chunk,
                Err(_) => continue,
            };
            // Moved out first (one commit of the ring's head for the whole chunk), then
            // handled; the scratch vector keeps its capacity, so nothing allocates.
            let mut msgs = std::mem::take(&mut self.msgs);
            msgs.extend(chunk);
            for msg in msgs.drain(..) {
                self.handle(i, now, msg);
            }
            self.msgs = msgs;
            self.flush_burst(now);
        }
        any
    }

    /// Takes at most `ingress_batch` records from each shared-memory ring. Bad
    /// records are counted (`shm_rejected`) and skipped. Returns whether any.
    ///
    /// Backpressure as for the in-process rings: no more records than the descriptor
    /// pool has room for, spent ring by ring, so the peers see a full ring (a pool
    /// smaller than a batch is still read, and several rings cannot overrun it). With
    /// `last` (the stop's last pass) it reads whatever the pool's room: what it cannot
    /// queue is refused, counted, rather than left unread in the ring.
    fn take_shm(&mut self, now: u64, last: bool) -> bool {
        let mut any = false;
        let max_local = self.config.scheduler.max_streams;
        let mut room = if last {
            usize::MAX
        } else {
            self.ingress_room()
        };
        let rings = self.shm.len();
        let first = rotation(self.stats.iterations, rings);
        for k in (first..rings).chain(0..first) {
            let n = self.config.ingress_batch.min(room);
            if n == 0 {
                break; // backpressure: the peers see a full ring
            }
            let mut msgs = std::mem::take(&mut self.msgs);
            let inbox = &mut self.shm[k];
            if inbox.done {
                self.msgs = msgs;
                continue;
            }
            match inbox.rx.read(n) {
                Ok(mut batch) => {
                    let mut read = 0;
                    while let Some(r) = batch.next_into(&mut inbox.buf) {
                        read += 1;
                        // A local stream number must fit the stream table: a hostile
                        // peer must not make the worker allocate for `u32::MAX`.
                        let msg = r.ok().and_then(|n| {
                            super::shm::decode(&inbox.buf[..n])
                                .ok()
                                .filter(|rec| rec.local() < max_local)
                                .and_then(|rec| shm_msg(rec, &mut inbox.decode))
                        });
                        match msg {
                            Some(m) => msgs.push(m),
                            None => self.stats.shm_rejected += 1,
                        }
                    }
                    room = room.saturating_sub(read);
                    any |= batch.release() > 0;
                }
                Err(qos_shm_ring::PopError::Empty) => {}
                Err(qos_shm_ring::PopError::Disconnected) => inbox.done = true,
                Err(qos_shm_ring::PopError::Record(_)) => self.stats.shm_rejected += 1,
                Err(qos_shm_ring::PopError::Corrupt(_)) => {
                    self.stats.shm_rejected += 1;
                    inbox.done = true;
                }
            }
            let source = self.inboxes.len() + k;
            for msg in msgs.drain(..) {
                self.handle(source, now, msg);
            }
            self.msgs = msgs;
            self.flush_burst(now);
        }
        any
    }

    /// Free packet descriptors (what ingress may take this iteration): the drops
    /// awaiting reclaim hold theirs too (counting only the queued packets let ingress
    /// take more than the pool could hold, refused `pool_exhausted`).
    fn ingress_room(&self) -> usize {
        self.sched.free_descriptors() as usize
    }

    fn handle(&mut self, inbox: usize, now: u64, msg: Msg<P>) {
        if self.sunk {
            // The egress failed and the streams are closed: packets are discarded,
            // counted; control messages have nothing left to act on.
            if let Msg::Packet { packet, .. } = msg {
                self.stats.taken += 1;
                self.stats.egress_failed += 1;
                self.discard(packet, None, DiscardReason::EgressFailed);
            }
            return;
        }
        match msg {
            Msg::Packet { local, len, packet } => {
                self.stats.taken += 1;
                match self.tables[inbox].get(local as usize) {
                    Some(Some(id)) if self.shed_prios != 0 => {
                        let id = *id;
                        self.shed_or_queue(id, packet, len);
                    }
                    Some(Some(id)) => self.burst.push((*id, packet, len)),
                    _ => {
                        self.stats.unknown_stream += 1;
                        self.discard(packet, None, DiscardReason::UnknownStream);
                    }
                }
            }
            Msg::Open { local, key, config } => {
                self.flush_burst(now);
                // A shm peer may reuse an open number: the old stream is closed first
                // (its queue dropped as `closed`), never orphaned.
                if let Some(old) = self.stream(inbox, local) {
                    self.stats.control_failed += 1;
                    let _ = self.close_stream(old);
                    self.reclaim();
                }
                let id = match self.sched.open(config) {
                    Ok(id) => {
                        let slot = id.index() as usize;
                        if self.keys.len() <= slot {
                            self.keys.resize(slot + 1, 0);
                            self.shed.resize(slot + 1, 0);
                        }
                        self.keys[slot] = key;
                        self.shed[slot] = 0;
                        self.windows.opened(slot);
                        Some(id)
                    }
                    Err(_) => {
                        self.stats.open_failed += 1;
                        None
                    }
                };
                let table = &mut self.tables[inbox];
                if table.len() <= local as usize {
                    table.resize(local as usize + 1, None);
                }
                table[local as usize] = id;
            }
            Msg::Update { local, config } => {
                self.flush_burst(now);
                let id = self.stream(inbox, local);
                let before = id.and_then(|id| self.sched.stream_stats(id));
                if id.is_none_or(|id| self.sched.update(id, config).is_err()) {
                    self.stats.control_failed += 1;
                } else if let (Some(id), Some(before)) = (id, before)
                    && self.sched.stream_priority(id) != Some(before.priority)
                {
                    // The worker's counters booked what came before under the old
                    // priority: so must the report windows.
                    let slot = id.index() as usize;
                    let shed = self.shed.get(slot).copied().unwrap_or(0);
                    self.windows.moved(slot, &before, shed);
                }
            }
            Msg::Close { local } => {
                self.flush_burst(now);
                let id = self.stream(inbox, local);
                if id.is_none_or(|id| self.close_stream(id).is_err()) {
                    self.stats.control_failed += 1;
                }
                if let Some(slot) = self.tables[inbox].get_mut(local as usize) {
                    *slot = None;
                }
                self.reclaim();
            }
        }
    }

    /// Under degrade: sheds the packet if its stream's tier is shed, else queues it.
    fn shed_or_queue(&mut self, id: StreamId, packet: P, len: u32) {
        match self.sched.stream_priority(id) {
            Some(p) if self.shed_prios & (1 << p.get()) != 0 => {
                self.stats.shed[p.index()] += 1;
                if let Some(n) = self.shed.get_mut(id.index() as usize) {
                    *n += 1;
                }
                self.discard(packet, Some(id), DiscardReason::Shed);
            }
            _ => self.burst.push((id, packet, len)),
        }
    }

    /// The priorities of the tiers the control plane asks to shed, under the
    /// adopted policy.
    fn shed_priorities(&self) -> u8 {
        let tiers = self.shared.shed_tiers();
        if tiers == 0 {
            return 0;
        }
        (0..PRIORITIES as u8)
            .filter(|&p| {
                let t = self.adopted.tier_of(p);
                t < 64 && tiers & (1u64 << t) != 0
            })
            .fold(0u8, |m, p| m | (1 << p))
    }

    /// Walks the requested stream report a bounded step further and hands it back
    /// once complete. Returns whether it is still walking (the worker then does not
    /// park).
    fn step_report(&mut self, now: u64) -> bool {
        if self.report.is_none()
            && let Some(r) = self.report_in.take()
        {
            self.report_limit = Some(r.limit());
            self.report = Some((r, false));
        }
        let Some((mut r, done)) = self.report.take() else {
            return false;
        };
        let done = done
            || r.step(
                &self.sched,
                &self.keys,
                &self.shed,
                &mut self.windows,
                now,
                SLOTS_PER_ITERATION,
            );
        if !done {
            self.report = Some((r, false));
            return true;
        }
        self.refresh_stats();
        r.stats.clone_from(&self.stats);
        if let Err(r) = self.report_out.put(r) {
            self.report = Some((r, true));
        }
        false
    }

    fn stream(&self, inbox: usize, local: u32) -> Option<StreamId> {
        self.tables[inbox].get(local as usize).copied().flatten()
    }

    /// Enqueues the packets gathered so far (one prefetching burst).
    fn flush_burst(&mut self, now: u64) {
        if self.burst.is_empty() {
            return;
        }
        if self.config.bypass_scheduler {
            for (stream, packet, len) in self.burst.drain(..) {
                self.outbox.push_back(Dequeued {
                    packet,
                    stream,
                    len,
                    priority: Priority::saturating(0),
                    sojourn_ns: 0,
                });
            }
            return;
        }
        self.sched
            .enqueue_burst(now, &mut self.burst, &mut self.rejected);
        // In arrival order; the scratch vector keeps its capacity.
        let mut rejected = std::mem::take(&mut self.rejected);
        for r in rejected.drain(..) {
            let reason = match r.reason {
                Rejection::Refused(r) => DiscardReason::Refused(r),
                Rejection::Dropped(r) => DiscardReason::Dropped(r),
            };
            self.discard(r.packet, None, reason);
        }
        self.rejected = rejected;
    }

    /// Hands every packet the scheduler dropped to the egress. Returns whether any.
    fn reclaim(&mut self) -> bool {
        let mut any = false;
        while let Some(r) = self.sched.pop_reclaimed() {
            any = true;
            self.discard(r.packet, Some(r.stream), DiscardReason::Dropped(r.reason));
        }
        any
    }

    /// Closes a stream; what it did since the last report walk goes to the next
    /// report's rest.
    fn close_stream(&mut self, id: StreamId) -> Result<(), crate::sched::StreamError> {
        let stats = self.sched.close(id)?;
        let slot = id.index() as usize;
        let shed = self.shed.get(slot).copied().unwrap_or(0);
        self.windows.closed(slot, &stats, shed);
        Ok(())
    }

    /// Hands a packet the dataplane will not send to the egress, counted. After the
    /// egress panicked the packet is dropped here instead (the count stands).
    fn discard(&mut self, packet: P, stream: Option<StreamId>, reason: DiscardReason) {
        self.stats.discarded += 1;
        if self.egress_panic.is_some() {
            return;
        }
        let egress = &mut self.egress;
        let call = || {
            egress.discard(Discarded {
                packet,
                stream,
                reason,
            });
        };
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
            self.egress_panicked(payload);
        }
    }

    /// The embedder's egress panicked: keeps the first payload for `shutdown`, and
    /// closes the worker to producers at once (their pushes return `Closed`). The
    /// worker discards what it holds at the end of the iteration ([`Worker::sink`]).
    fn egress_panicked(&mut self, payload: Box<dyn std::any::Any + Send>) {
        if self.egress_panic.is_none() {
            self.egress_panic = Some(payload);
            self.shared.workers[self.index].mark_panicked();
        }
    }

    /// After the egress panicked: takes what is in the rings, closes every stream (its
    /// queue dropped `closed` by the scheduler, its report window carried into the next
    /// report, as when a producer closes it), counts the dequeued, untaken packets as
    /// `egress_failed`, gives its part of the link back, and hands nothing to the
    /// egress. The worker then runs on, discarding what still reaches it (a producer
    /// that passed its check just before the worker closed, a shared-memory peer),
    /// until the dataplane stops.
    fn sink(&mut self, now: u64) {
        // Not the last read: what arrives later is read by the next iterations, so no
        // wait at the producers' gates.
        self.drain_rings(now, false);
        // Closed as by their producers: what they did since the last report walk goes
        // to the next report's rest, so reports stay in order.
        for table in std::mem::take(&mut self.tables) {
            for id in table.into_iter().flatten() {
                let _ = self.close_stream(id);
            }
        }
        self.reclaim();
        // Last, so that packets a bypassing worker put on offer just now count here.
        while let Some(d) = self.outbox.pop_front() {
            self.stats.egress_failed += 1;
            self.discard(d.packet, Some(d.stream), DiscardReason::EgressFailed);
        }
        self.forward_events();
        self.sunk = true;
        // Its part of the link goes back, and it asks for none: the others share it.
        self.shared.link.publish(self.index, &[0; MAX_TIERS]);
        if let Some(st) = self.link.take() {
            self.shared.link.ledger.release(st.mine);
        }
        self.shared.workers[self.index].set_granted(0);
        self.stats.link_rate_bps = 0;
        self.stats.tier_alloc_bps = [0; MAX_TIERS];
        self.publish_all();
    }

    /// Moves scheduler events to the event ring for the control plane.
    fn forward_events(&mut self) {
        while let Some(e) = self.sched.pop_event() {
            let tag = event_stream(&e).map(|id| StreamTag {
                key: self.keys.get(id.index() as usize).copied().unwrap_or(0),
                priority: self.sched.stream_priority(id),
            });
            if self.events.push((e, tag)).is_err() {
                self.stats.events_lost += 1;
            }
        }
    }

    /// Dequeues a batch if the egress took the last one, and offers what is pending.
    fn send(&mut self, now: u64) -> (bool, Option<u64>) {
        let mut wait_until = None;
        if self.egress_panic.is_some() {
            return (false, None);
        }
        if self.outbox.is_empty() {
            let end = self
                .sched
                .dequeue_batch(now, self.config.egress_batch, &mut self.batch);
            self.outbox.extend(self.batch.drain(..));
            if let BatchEnd::Wait { until_ns } = end {
                wait_until = Some(until_ns);
            }
        }
        if self.outbox.is_empty() {
            return (false, wait_until);
        }
        let mut out = Outbox::new(&mut self.outbox);
        let egress = &mut self.egress;
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            egress.send(now, &mut out);
        }));
        // What the egress took before a panic counts as sent: it had the packets.
        let (packets, bytes) = out.taken();
        self.stats.sent += packets;
        self.stats.sent_bytes += bytes;
        if let Err(payload) = call {
            self.egress_panicked(payload);
        }
        (packets > 0, wait_until)
    }

    /// At exit: the reports the reader has not received, oldest first, then a final
    /// one (only if the reader ever asked for reports): walked whole now, or after a
    /// discarding stop the one it built from the streams it closed. A walk under
    /// way is finished first and handed back as it is: the slots it had passed may
    /// have moved since, which only a fresh walk sees.
    fn final_reports(&mut self) -> Vec<StreamReport> {
        let mut out = Vec::new();
        self.finish_pending_walk();
        if let Some((r, _)) = self.report.take() {
            out.push(*r);
        }
        if let Some(mut r) = self.exit_report.take() {
            // Built by a discarding stop; stamped with the counters as they end.
            self.refresh_stats();
            r.stats.clone_from(&self.stats);
            out.push(*r);
        } else if let Some(limit) = self.report_limit {
            let mut r = StreamReport::empty(self.index, limit);
            self.walk_whole(&mut r, self.shared.clock.now_ns());
            out.push(*r);
        }
        out
    }

    /// At exit: completes the walk under way, or the one asked for and not started
    /// (which sets the report size), on the streams as they are now.
    fn finish_pending_walk(&mut self) {
        let pending = self.report.take().or_else(|| {
            self.report_in.take().map(|r| {
                self.report_limit = Some(r.limit());
                (r, false)
            })
        });
        if let Some((mut r, done)) = pending {
            if !done {
                self.walk_whole(&mut r, self.shared.clock.now_ns());
            }
            self.report = Some((r, true));
        }
    }

    /// Walks `r` to its end at once (exit only) and stamps the counters.
    fn walk_whole(&mut self, r: &mut StreamReport, now: u64) {
        r.step(
            &self.sched,
            &self.keys,
            &self.shed,
            &mut self.windows,
            now,
            usize::MAX,
        );
        self.refresh_stats();
        r.stats.clone_from(&self.stats);
    }

    /// Everything recorded and not yet handed to the reader: the live histograms plus
    /// a filled set the reader has not collected.
    fn final_histograms(&mut self) -> Hists {
        let mut last = super::WorkerHistograms::empty();
        self.sched.drain_sojourn_histograms(&mut last.sojourn);
        std::mem::swap(&mut self.iteration_ns, &mut last.iteration_ns);
        if let Some(pending) = self.outgoing.take() {
            last.add(&pending);
        }
        last
    }

    /// T4: answers the reader's request for histograms (an empty set in, the full one
    /// out).
    fn exchange_histograms(&mut self) {
        if self.outgoing.is_none()
            && let Some(mut empty) = self.hist_in.take()
        {
            self.sched.drain_sojourn_histograms(&mut empty.sojourn);
            std::mem::swap(&mut self.iteration_ns, &mut empty.iteration_ns);
            self.outgoing = Some(empty);
        }
        if let Some(full) = self.outgoing.take()
            && let Err(full) = self.hist_out.put(full)
        {
            self.outgoing = Some(full);
        }
    }

    fn publish(&mut self, now: u64) {
        if now >= self.next_publish {
            self.next_publish = now.saturating_add(duration_ns(self.config.publish_interval));
            self.refresh_stats();
            self.shared.workers[self.index]
                .counters
                .publish(&self.stats);
        } else {
            self.shared.workers[self.index]
                .counters
                .publish_hot(&self.stats);
        }
    }

    fn publish_all(&mut self) {
        self.refresh_stats();
        self.shared.workers[self.index]
            .counters
            .publish(&self.stats);
    }

    fn refresh_stats(&mut self) {
        self.stats.shard = self.sched.shard_stats();
        self.stats.pending = self.outbox.len() as u64;
        for (p, slot) in self.stats.priorities.iter_mut().enumerate() {
            *slot = self.sched.priority_stats(Priority::saturating(p as u8));
        }
        for (t, slot) in self.stats.tier_bytes.iter_mut().take(MAX_TIERS).enumerate() {
            *slot = self.sched.tier_stats(t).map_or(0, |s| s.served.bytes);
        }
        self.stats.tier_bytes[MAX_TIERS] = self.sched.aging_lane_stats().bytes;
    }

    /// T6: every `link_period`, publishes this worker's demand per tier, computes its
    /// part of the link from every worker's demand and moves its pacing rate there
    /// through the ledger (see `link.rs`).
    /// Returns the time the rest of the iteration runs at.
    fn share_link(&mut self, now: u64) -> u64 {
        // A worker whose egress failed sends nothing and takes no part of the link
        // (`sink` gave its part back), whatever policy it adopts later.
        if self.sunk {
            return now;
        }
        let Some(link) = self.adopted.spec().link else {
            if let Some(st) = self.link.take() {
                // Without a link this worker asks for nothing: a link set again later
                // must not be split by its stale demand.
                self.shared.link.publish(self.index, &[0; MAX_TIERS]);
                self.shared.link.ledger.release(st.mine);
                self.shared.workers[self.index].set_granted(0);
                self.stats.link_rate_bps = 0;
                self.stats.tier_alloc_bps = [0; MAX_TIERS];
            }
            return now;
        };
        let workers = self.shared.workers.len();
        let st = self.link.get_or_insert_with(|| LinkState {
            mine: 0,
            weights: [0; MAX_TIERS],
            next_at: now,
            last_at: now,
            primed: false,
            last_packets: [0; MAX_TIERS],
            last_bytes: [0; MAX_TIERS],
            packet_bytes: [0; MAX_TIERS],
            ewma: [0; MAX_TIERS],
            demands: Vec::with_capacity(workers),
            scratch: super::link::Scratch::new(workers),
        });
        if now < st.next_at {
            return now;
        }
        st.next_at = now.saturating_add(duration_ns(self.config.link_period));
        let demand = self.measure_demand(now);
        let board = &self.shared.link;
        board.publish(self.index, &demand);
        let st = self.link.as_mut().expect("set above");
        board.read(&mut st.demands);
        let tiers = self.adopted.tiers().len();
        let mut shares = [0u64; MAX_TIERS];
        for (s, t) in shares.iter_mut().zip(self.adopted.tiers()) {
            *s = u64::from(t.share_percent);
        }
        // Workers that ended (or only sink after their egress failed) ask for nothing
        // and pace nothing: the slack is split between the others.
        let live = self.shared.workers.iter().filter(|w| !w.is_gone()).count();
        let (target, weights) = super::link::allocate_among(
            link.rate_bps,
            &shares[..tiers],
            &st.demands,
            self.index,
            live,
            &mut st.scratch,
        );
        st.weights = weights;
        self.stats.tier_alloc_bps = st.scratch.tier_alloc;
        self.move_rate(
            target,
            link.rate_bps,
            link.burst_bytes / workers as u64,
            now,
        )
    }

    /// Per-tier demand in bit/s: the smoothed rate of bytes offered plus queued bytes
    /// spread over the queue horizon.
    fn measure_demand(&mut self, now: u64) -> [u64; MAX_TIERS] {
        let st = self.link.as_mut().expect("link state");
        let dt = now.saturating_sub(st.last_at).max(1);
        // Arrivals, not service: a tier whose excess AQM or tail drop trims keeps a
        // short queue, yet asks for all it is offered. Bytes as counted, not packets
        // times an average size: a tier whose packets grow or shrink asks for what it
        // is offered now (an average over the tier's life under-counted a tier that
        // moved from 64-byte to 9,000-byte packets by 100x).
        let mut queued = [0u64; MAX_TIERS];
        let mut packets = [0u64; MAX_TIERS];
        let mut bytes = [0u64; MAX_TIERS];
        for p in 0..PRIORITIES as u8 {
            let t = self.adopted.tier_of(p);
            let ps = self.sched.priority_stats(Priority::saturating(p));
            queued[t] += ps.queued;
            packets[t] += ps.enqueued;
            bytes[t] += self.sched.offered_bytes(Priority::saturating(p));
        }
        let mut demand = [0u64; MAX_TIERS];
        for t in 0..self.adopted.tiers().len() {
            // Offered since the last period (after a remap of priorities to tiers the
            // reading starts afresh: `adopt_policy` unprimes it).
            let (since_packets, since_bytes) = match st.primed {
                true => (st.last_packets[t], st.last_bytes[t]),
                false => (packets[t], bytes[t]),
            };
            let new_packets = packets[t].saturating_sub(since_packets);
            let new_bytes = bytes[t].saturating_sub(since_bytes);
            st.last_packets[t] = packets[t];
            st.last_bytes[t] = bytes[t];
            // The queued packets are sized as the latest arrivals.
            if let Some(mean) = new_bytes.checked_div(new_packets) {
                st.packet_bytes[t] = mean.max(1);
            } else if st.packet_bytes[t] == 0 {
                st.packet_bytes[t] = bytes[t]
                    .checked_div(packets[t])
                    .unwrap_or(u64::from(self.adopted.spec().max_packet_bytes));
            }
            let rate = (u128::from(new_bytes) * 8_000_000_000 / u128::from(dt))
                .min(u128::from(u64::MAX / 4)) as u64;
            st.ewma[t] = st.ewma[t] / 2 + rate / 2;
            let backlog = u128::from(queued[t]) * u128::from(st.packet_bytes[t]) * 8_000_000_000
                / u128::from(super::link::QUEUE_HORIZON_NS);
            demand[t] = st.ewma[t].saturating_add(backlog.min(u128::from(u64::MAX / 64)) as u64);
        }
        st.primed = true;
        st.last_at = now;
        demand
    }

    /// Moves this worker's pacing rate toward `target`: lower first, then return the
    /// difference to the ledger; or claim first, then raise from a fresh clock reading.
    /// Returns the time the new rate applies from.
    fn move_rate(&mut self, target: u64, link_bps: u64, burst: u64, now: u64) -> u64 {
        let st = self.link.as_mut().expect("link state");
        let ledger = &self.shared.link.ledger;
        let mut at = now;
        if target < st.mine {
            let give = st.mine - target;
            st.mine = target;
            apply_share(&mut self.sched, at, st.mine, burst, st.weights);
            ledger.release(give);
        } else {
            let got = ledger.claim(target - st.mine, link_bps);
            if got > 0 {
                at = self.shared.clock.now_ns();
                st.mine += got;
            }
            apply_share(&mut self.sched, at, st.mine, burst, st.weights);
        }
        self.shared.workers[self.index].set_granted(st.mine);
        self.stats.link_rate_bps = st.mine;
        at
    }

    /// Before parking with nothing queued: publish no demand and keep only a floor
    /// rate, so busy workers can use the link (work conservation across workers).
    fn release_link(&mut self, now: u64) {
        let Some(link) = self.adopted.spec().link else {
            return;
        };
        let workers = self.shared.workers.len() as u64;
        self.shared.link.publish(self.index, &[0; MAX_TIERS]);
        if let Some(st) = self.link.as_mut() {
            st.ewma = [0; MAX_TIERS];
        }
        let floor = (link.rate_bps / (64 * workers)).max(1);
        if self.link.as_ref().is_some_and(|st| st.mine > floor) {
            self.move_rate(floor, link.rate_bps, link.burst_bytes / workers, now);
        }
    }

    /// Nothing to do this iteration: spin, yield, then park until woken, the pacing
    /// deadline or the park timeout.
    fn idle(&mut self, backoff: &Backoff, now: u64, wait_until: Option<u64>) {
        let park_timeout = match self.config.idle {
            IdleStrategy::Spin => return std::hint::spin_loop(),
            IdleStrategy::Backoff { park_timeout } => park_timeout,
        };
        if !backoff.is_completed() {
            backoff.snooze();
            return;
        }
        let mut timeout = match wait_until {
            Some(t) => park_timeout.min(std::time::Duration::from_nanos(t.saturating_sub(now))),
            None => park_timeout,
        };
        if self.link.is_some() {
            if self.sched.queued() == 0 && self.outbox.is_empty() {
                self.release_link(now);
            } else if let Some(st) = &self.link {
                let until = st.next_at.saturating_sub(now);
                timeout = timeout.min(std::time::Duration::from_nanos(until));
            }
        }
        // While stopping, wake-ups come from producers being dropped (they ring), the
        // pacing deadline, or the drain deadline.
        let stopping = self.shared.stop_mode().is_some();
        // A `DrainCut` moves the deadline: a change after this reading is work.
        let deadline = self.shared.stop_deadline();
        if stopping {
            let left = deadline.saturating_sub(now);
            timeout = timeout.min(std::time::Duration::from_nanos(left));
        }
        // Full rings are work only if the pool has room to take from them.
        let can_take = self.ingress_room() > 0;
        let shared = &self.shared;
        let index = self.index;
        let inboxes = &self.inboxes;
        // A shared-memory peer cannot ring the doorbell: with shm ingress attached the
        // worker parks only briefly (it polls the ring every 50 us).
        let shm_pending = self
            .shm
            .iter()
            .any(|s| !s.done && s.rx.cached_available() > 0);
        if self.shm.iter().any(|s| !s.done) {
            timeout = timeout.min(std::time::Duration::from_micros(50));
        }
        let hist_in = &self.hist_in;
        let report_in = &self.report_in;
        let adopted = &self.adopted;
        let policy = &mut self.policy;
        let bell = shared.workers[index]
            .bell
            .get()
            .expect("the worker set its doorbell before its first iteration");
        bell.sleep_unless(timeout, || {
            hist_in.is_waiting()
                || report_in.is_waiting()
                || (!stopping && shared.stop_mode().is_some())
                || shared.stop_deadline() != deadline
                || (can_take && (shm_pending || inboxes.iter().any(|i| !i.rx.is_empty())))
                || !std::sync::Arc::ptr_eq(policy.load(), adopted)
        });
    }

    /// Stopping: returns `true` once the worker may exit; before that, keeps running
    /// iterations (producers may still be flushing). Past the deadline, discards the rest.
    fn stopped(&mut self, mode: StopMode, now: u64) -> bool {
        let rings_done = self
            .inboxes
            .iter()
            .all(|i| i.rx.is_abandoned() && i.rx.is_empty())
            && self.shm.iter().all(|s| s.done);
        let deadline = now >= self.shared.stop_deadline();
        if !rings_done && !deadline {
            return false;
        }
        if self.sunk {
            // Its queues were discarded when the egress failed: a last pass over the
            // rings, then out.
            self.drain_rings(now, true);
            self.last_shm_pass(now);
            return true;
        }
        let drained = self.outbox.is_empty() && self.sched.queued() == 0;
        if mode == StopMode::Drain && drained && rings_done {
            return true;
        }
        if mode == StopMode::Drain && !deadline {
            return false;
        }
        // A drain with something left that ends before its timeout was cut.
        self.cut = mode == StopMode::Drain && self.shared.drain_was_cut();
        self.discard_everything(now);
        true
    }

    /// Takes every message in the rings from producers (not the shared-memory ones),
    /// ignoring the descriptor pool's room: each packet is queued, or discarded with
    /// its reason.
    ///
    /// With `last`, this is the worker's last read of those rings: producers are
    /// closed to it already, and it first waits for each producer still inside its
    /// gate to finish its burst (`gate.rs`), so that no packet `enqueue` accepted is
    /// left behind. The wait is at most a second in all; a producer still inside then
    /// is counted in `gate_timeouts`.
    fn drain_rings(&mut self, now: u64, last: bool) {
        let clock = self.shared.clock;
        let give_up_at = clock.now_ns().saturating_add(1_000_000_000);
        for i in 0..self.inboxes.len() {
            if last
                && !self.inboxes[i].rx.is_abandoned()
                && !self.shared.gates[i].wait_idle(|| clock.now_ns() >= give_up_at)
            {
                self.stats.gate_timeouts += 1;
            }
            while let Ok(msg) = self.inboxes[i].rx.pop() {
                self.handle(i, now, msg);
            }
            self.flush_burst(now);
        }
    }

    /// One bounded pass over each shared-memory ring, then none is read again: a live
    /// peer never sees the stop flag and must not keep the worker here.
    fn last_shm_pass(&mut self, now: u64) {
        let passes = self.shm.iter().map(|i| i.rx.capacity()).max().unwrap_or(0)
            / self.config.ingress_batch
            + 1;
        for _ in 0..passes {
            if !self.take_shm(now, true) {
                break;
            }
        }
        for inbox in &mut self.shm {
            inbox.done = true;
        }
    }

    /// Discards what is left: ring contents, queued packets (by closing every stream,
    /// counted `closed` by the scheduler; the exit report still ranks and names those
    /// streams) and the pending outbox.
    fn discard_everything(&mut self, now: u64) {
        self.drain_rings(now, true);
        self.last_shm_pass(now);
        // A walk under way ends on the streams as they were; the exit report is then
        // built from the streams the stop closes (bounded by the report size).
        self.finish_pending_walk();
        let mut exit = self
            .report_limit
            .map(|limit| StreamReport::empty(self.index, limit));
        for table in std::mem::take(&mut self.tables) {
            for id in table.into_iter().flatten() {
                let Some(r) = exit.as_mut() else {
                    let _ = self.close_stream(id);
                    continue;
                };
                if let Ok(stats) = self.sched.close(id) {
                    let slot = id.index() as usize;
                    let key = self.keys.get(slot).copied().unwrap_or(slot as u64);
                    let shed = self.shed.get(slot).copied().unwrap_or(0);
                    r.closed_at_stop(&mut self.windows, key, id, stats, shed);
                }
            }
        }
        if let Some(mut r) = exit {
            r.complete(&mut self.windows, now);
            self.exit_report = Some(r);
        }
        self.reclaim();
        while let Some(d) = self.outbox.pop_front() {
            self.stats.shutdown_discarded += 1;
            self.discard(d.packet, Some(d.stream), DiscardReason::Shutdown);
        }
        self.forward_events();
    }
}

/// The stream an event is about, if any.
fn event_stream(e: &Event) -> Option<StreamId> {
    match *e {
        Event::BackpressureWarning { stream, .. }
        | Event::BackpressureCritical { stream, .. }
        | Event::BackpressureCleared { stream, .. }
        | Event::Disconnected { stream, .. }
        | Event::Promoted { stream, .. } => Some(stream),
        _ => None,
    }
}

/// The ring read first in iteration `iteration` of `rings` (0 when there are none).
fn rotation(iteration: u64, rings: usize) -> usize {
    (iteration % (rings.max(1) as u64)) as usize
}

/// `d` in ns, saturating at `u64::MAX` (a cast would wrap a long timeout to nearly 0).
pub(crate) fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Applies a worker's part of the link to its scheduler.
fn apply_share<P>(
    sched: &mut Scheduler<P>,
    now: u64,
    rate: u64,
    burst: u64,
    weights: [u64; MAX_TIERS],
) {
    sched.set_link_share(
        now,
        LinkShare {
            rate_bps: rate.max(1),
            burst_bytes: burst,
            tier_weights: weights,
        },
    );
}

/// A decoded shared-memory record as a ring message; `None` if the embedder's decoder
/// refused the payload or panicked on it (the caller counts it rejected). The decoder
/// is embedder code run on the worker, as the egress is: its panic must not unwind
/// the worker and lose what the worker holds.
fn shm_msg<P>(rec: super::shm::ShmRecord<'_>, decode: &mut ShmDecode<P>) -> Option<Msg<P>> {
    use super::shm::ShmRecord;
    Some(match rec {
        ShmRecord::Open { local, config } => Msg::Open {
            local,
            key: u64::from(local),
            config,
        },
        ShmRecord::Update { local, config } => Msg::Update { local, config },
        ShmRecord::Close { local } => Msg::Close { local },
        ShmRecord::Packet {
            local,
            len,
            payload,
        } => Msg::Packet {
            local,
            len,
            packet: std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(payload)))
                .ok()
                .flatten()?,
        },
    })
}
