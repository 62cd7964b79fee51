//! Per-stream reports for the control plane (O1, O6): each worker walks its stream
//! table a bounded number of slots per loop iteration and keeps the busiest `limit`
//! streams, so a report over a million streams never stalls a worker, and its size is
//! bounded by the limit, not by the stream count.
//!
//! The report travels by exchange, like the histograms: the reader hands an empty
//! [`StreamReport`] (with its capacity reserved) to the worker through a mailbox, the
//! worker fills it over as many iterations as its table needs and hands it back. The
//! worker allocates nothing for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::sched::policy::PRIORITIES;
use crate::sched::{Scheduler, StreamId, StreamStats};

/// Slots a worker looks at per loop iteration while it builds a report.
pub(crate) const SLOTS_PER_ITERATION: usize = 1024;

/// One stream's counters in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The key the stream was opened with ([`Producer::open`](super::Producer::open)
    /// or [`Producer::open_on`](super::Producer::open_on); for a shared-memory peer,
    /// its local stream number).
    pub key: u64,
    /// The stream on its worker.
    pub id: StreamId,
    /// The scheduler's counters of the stream (S11 per stream).
    pub stats: StreamStats,
    /// Packets of the stream shed at ingress by degrade (never reached the scheduler,
    /// so not in `stats`).
    pub shed: u64,
    /// What the stream did since the worker's previous report walk (or since it was
    /// opened, if later): the report's window.
    pub window: WindowCounts,
}

impl StreamEntry {
    /// How busy the stream has been over its life: packets offered to the scheduler
    /// or shed.
    pub fn score(&self) -> u64 {
        self.stats.enqueued.saturating_add(self.shed)
    }

    /// The ranking key: packets offered in the report's window, then over the
    /// stream's life. The busiest streams are the busiest now, not the oldest.
    pub fn rank(&self) -> (u64, u64) {
        (self.window.offered, self.score())
    }
}

/// What streams did over a report's window: deltas of their counters between two
/// report walks of the same worker. Summed over every report a worker hands back,
/// the windows of all its streams (named ones in [`StreamReport::top`], the rest in
/// [`StreamReport::rest`]) add up exactly to its totals: nothing is counted twice or
/// lost when a stream joins or leaves the named set, opens or closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Packets offered to the scheduler or shed.
    pub offered: u64,
    /// Packets handed to the egress.
    pub dequeued: u64,
    /// Packets dropped, by any reason, shed included.
    pub dropped: u64,
}

impl WindowCounts {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &Self) {
        self.offered += o.offered;
        self.dequeued += o.dequeued;
        self.dropped += o.dropped;
    }

    fn sub(&mut self, o: &Self) {
        self.offered = self.offered.saturating_sub(o.offered);
        self.dequeued = self.dequeued.saturating_sub(o.dequeued);
        self.dropped = self.dropped.saturating_sub(o.dropped);
    }

    /// The counters of a stream's life so far (`shed`: its ingress sheds).
    pub(crate) fn life(stats: &StreamStats, shed: u64) -> Self {
        Self {
            offered: stats.enqueued.saturating_add(shed),
            dequeued: stats.dequeued,
            dropped: stats.dropped() + shed,
        }
    }
}

/// A worker's per-slot memory of what the previous report walk saw, and what streams
/// closed since then left behind, per priority: the state behind report windows.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    /// By slot: the stream's life counters when the last walk passed it (zero when
    /// the slot was (re)opened since).
    seen: Vec<WindowCounts>,
    /// By priority: the windows of streams closed since the last completed walk.
    closed: [WindowCounts; PRIORITIES],
    /// When the last walk completed (the worker's clock).
    last_ns: u64,
}

impl Windows {
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            last_ns: now_ns,
            ..Self::default()
        }
    }

    /// A stream was opened in `slot`: its window starts at zero.
    pub(crate) fn opened(&mut self, slot: usize) {
        if self.seen.len() <= slot {
            self.seen.resize(slot + 1, WindowCounts::default());
        }
        self.seen[slot] = WindowCounts::default();
    }

    /// The stream in `slot` closed with these final counters: what it did since the
    /// last walk passed it goes to its priority's rest.
    pub(crate) fn closed(&mut self, slot: usize, stats: &StreamStats, shed: u64) {
        self.settle(slot, stats, shed, WindowCounts::default());
    }

    /// The stream in `slot` is about to change priority; these are its counters under
    /// the old one. What it did since the last walk passed it goes to the old
    /// priority's rest (where the worker's counters booked it), and its window starts
    /// again under the new one.
    pub(crate) fn moved(&mut self, slot: usize, stats: &StreamStats, shed: u64) {
        self.settle(slot, stats, shed, WindowCounts::life(stats, shed));
    }

    fn settle(&mut self, slot: usize, stats: &StreamStats, shed: u64, next: WindowCounts) {
        let mut w = WindowCounts::life(stats, shed);
        if self.seen.len() <= slot {
            self.seen.resize(slot + 1, WindowCounts::default());
        }
        w.sub(&self.seen[slot]);
        self.seen[slot] = next;
        self.closed[stats.priority.index()].add(&w);
    }

    /// The stream in `slot` now has these life counters: its window since the last
    /// look, which becomes the new baseline.
    fn take(&mut self, slot: usize, life: WindowCounts) -> WindowCounts {
        if self.seen.len() <= slot {
            self.seen.resize(slot + 1, WindowCounts::default());
        }
        let mut w = life;
        w.sub(&self.seen[slot]);
        self.seen[slot] = life;
        w
    }
}

/// Ranks entries by [`StreamEntry::rank`], then slot (a total order, so reports are
/// deterministic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ranked(StreamEntry);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.rank(), Reverse(self.0.id.index()))
            .cmp(&(other.0.rank(), Reverse(other.0.id.index())))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The busiest streams of one worker, at most `limit` of them, busiest first once
/// complete; plus how many streams the worker had open. Over the streams' lives, the
/// rest of the worker's traffic is its totals ([`WorkerStats`](super::WorkerStats))
/// minus these; over the report's window it is [`StreamReport::rest`].
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// The worker.
    pub worker: usize,
    /// Streams open (or disconnected) when the walk passed them.
    pub open_streams: u64,
    /// The busiest streams of the window ([`StreamEntry::rank`]), busiest first.
    pub top: Vec<StreamEntry>,
    /// By priority, the windows of every stream not in `top`, including streams
    /// that closed during the window: `top`'s windows plus these are everything the
    /// worker's streams did since its previous report.
    pub rest: [WindowCounts; PRIORITIES],
    /// By priority, packets queued in streams not in `top` when the walk passed them.
    pub rest_queued: [u64; PRIORITIES],
    /// Length of the window: from the worker's previous completed walk (or its start)
    /// to this one, ns.
    pub window_ns: u64,
    /// The worker's counters taken at the batch boundary where the walk completed:
    /// one consistent instant, so [`WorkerStats::is_conserved`] is exact on them
    /// while the worker runs (the live [`Dataplane::stats`] words may come from two
    /// publications).
    ///
    /// [`WorkerStats::is_conserved`]: super::WorkerStats::is_conserved
    /// [`Dataplane::stats`]: super::Dataplane::stats
    pub stats: super::WorkerStats,
    limit: usize,
    heap: BinaryHeap<Reverse<Ranked>>,
    cursor: usize,
}

impl StreamReport {
    /// An empty report for at most `limit` streams (memory reserved here, on the
    /// reader's thread).
    pub(crate) fn empty(worker: usize, limit: usize) -> Box<Self> {
        Box::new(Self {
            worker,
            open_streams: 0,
            top: Vec::with_capacity(limit),
            rest: [WindowCounts::default(); PRIORITIES],
            rest_queued: [0; PRIORITIES],
            window_ns: 0,
            stats: super::WorkerStats::default(),
            limit,
            heap: BinaryHeap::with_capacity(limit.saturating_add(1)),
            cursor: 0,
        })
    }

    /// The most streams it names.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Walks at most `max_slots` more slots; `true` once every slot was seen and
    /// the report is final (then `windows` starts the next window at `now_ns`).
    pub(crate) fn step<P>(
        &mut self,
        sched: &Scheduler<P>,
        keys: &[u64],
        shed: &[u64],
        windows: &mut Windows,
        now_ns: u64,
        max_slots: usize,
    ) -> bool {
        let end = sched
            .stream_slots()
            .min(self.cursor.saturating_add(max_slots));
        while self.cursor < end {
            let slot = self.cursor;
            self.cursor += 1;
            let Some((id, stats)) = sched.stream_at(slot) else {
                continue;
            };
            self.open_streams += 1;
            let shed = shed.get(slot).copied().unwrap_or(0);
            let window = windows.take(slot, WindowCounts::life(&stats, shed));
            self.consider(StreamEntry {
                key: keys.get(slot).copied().unwrap_or(slot as u64),
                id,
                stats,
                shed,
                window,
            });
        }
        if self.cursor < sched.stream_slots() {
            return false;
        }
        self.complete(windows, now_ns);
        true
    }

    /// Ranks stream `id`, just closed by a discarding stop with these final counters,
    /// as the walk would rank an open one: the exit report of such a stop is built from
    /// the streams it closes, so it names the busiest of them with what the stop
    /// dropped of each. [`StreamReport::complete`] finishes it.
    pub(crate) fn closed_at_stop(
        &mut self,
        windows: &mut Windows,
        key: u64,
        id: StreamId,
        stats: StreamStats,
        shed: u64,
    ) {
        let window = windows.take(id.index() as usize, WindowCounts::life(&stats, shed));
        self.consider(StreamEntry {
            key,
            id,
            stats,
            shed,
            window,
        });
    }

    /// Ends the report: the best entries become `top` (taken out of the rest), the
    /// windows of streams closed meanwhile join the rest, and `windows` starts the
    /// next window at `now_ns`.
    pub(crate) fn complete(&mut self, windows: &mut Windows, now_ns: u64) {
        self.top.clear();
        while let Some(Reverse(Ranked(e))) = self.heap.pop() {
            let p = e.stats.priority.index();
            self.rest[p].sub(&e.window);
            self.rest_queued[p] = self.rest_queued[p].saturating_sub(e.stats.queued);
            self.top.push(e);
        }
        self.top.reverse();
        for (rest, closed) in self.rest.iter_mut().zip(&mut windows.closed) {
            rest.add(closed);
            *closed = WindowCounts::default();
        }
        self.window_ns = now_ns.saturating_sub(windows.last_ns);
        windows.last_ns = now_ns;
    }

    /// Books a stream's window in the rest, and keeps it among the candidates for
    /// `top` if it ranks among the best `limit` so far (the named ones are taken out
    /// of the rest again when the walk completes).
    fn consider(&mut self, entry: StreamEntry) {
        let p = entry.stats.priority.index();
        self.rest[p].add(&entry.window);
        self.rest_queued[p] += entry.stats.queued;
        if self.limit == 0 {
            return;
        }
        // A min-heap of the best `limit`: the new entry replaces the weakest.
        if self.heap.len() < self.limit {
            self.heap.push(Reverse(Ranked(entry)));
        } else if let Some(mut weakest) = self.heap.peek_mut()
            && Ranked(entry) > weakest.0
        {
            *weakest = Reverse(Ranked(entry));
        }
    }
}
