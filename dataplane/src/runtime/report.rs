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
}

impl StreamEntry {
    /// How busy the stream has been: packets offered to the scheduler or shed.
    pub fn score(&self) -> u64 {
        self.stats.enqueued.saturating_add(self.shed)
    }
}

/// Ranks entries by score, then slot (a total order, so reports are deterministic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ranked(StreamEntry);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.score(), Reverse(self.0.id.index()))
            .cmp(&(other.0.score(), Reverse(other.0.id.index())))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The busiest streams of one worker, at most `limit` of them, busiest first once
/// complete; plus how many streams the worker had open. The rest of the worker's
/// traffic is its totals ([`WorkerStats`](super::WorkerStats)) minus these.
#[derive(Debug)]
pub struct StreamReport {
    /// The worker.
    pub worker: usize,
    /// Streams open (or disconnected) when the walk passed them.
    pub open_streams: u64,
    /// The busiest streams, busiest first.
    pub top: Vec<StreamEntry>,
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
            stats: super::WorkerStats::default(),
            limit,
            heap: BinaryHeap::with_capacity(limit + 1),
            cursor: 0,
        })
    }

    /// Walks at most [`SLOTS_PER_ITERATION`] more slots; `true` once every slot was
    /// seen and `top` is final.
    pub(crate) fn step<P>(&mut self, sched: &Scheduler<P>, keys: &[u64], shed: &[u64]) -> bool {
        let end = sched
            .stream_slots()
            .min(self.cursor.saturating_add(SLOTS_PER_ITERATION));
        while self.cursor < end {
            let slot = self.cursor;
            self.cursor += 1;
            let Some((id, stats)) = sched.stream_at(slot) else {
                continue;
            };
            self.open_streams += 1;
            if self.limit == 0 {
                continue;
            }
            let entry = StreamEntry {
                key: keys.get(slot).copied().unwrap_or(slot as u64),
                id,
                stats,
                shed: shed.get(slot).copied().unwrap_or(0),
            };
            // A min-heap of the best `limit`: the new entry replaces the weakest.
            if self.heap.len() < self.limit {
                self.heap.push(Reverse(Ranked(entry)));
            } else if let Some(mut weakest) = self.heap.peek_mut()
                && Ranked(entry) > weakest.0
            {
                *weakest = Reverse(Ranked(entry));
            }
        }
        if self.cursor < sched.stream_slots() {
            return false;
        }
        self.top.clear();
        while let Some(Reverse(Ranked(e))) = self.heap.pop() {
            self.top.push(e);
        }
        self.top.reverse();
        true
    }
}
