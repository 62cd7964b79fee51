//! Counters (S11), drop and refusal reasons, sojourn histograms and budget windows (S10).

use hdrhistogram::Histogram;

use super::policy::{MAX_TIERS, PRIORITIES};

/// Why a packet that was accepted for a stream was later dropped (S11). Every drop is
/// counted under its reason and the packet is handed back (directly or by reclaim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The stream's queue was at `max_queue_depth` (tail drop, S7).
    QueueFull,
    /// The stream was disconnected for ignoring backpressure (S8).
    Disconnected,
    /// The stream was closed while packets were queued.
    Closed,
    /// Queue-delay control (S14): CoDel, or the packet outlived its priority's interval.
    Aqm,
    /// A lowest-tier packet outlived the aging bound (`aging_timeout` + 1 s, S9).
    Expired,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 5;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::QueueFull,
        DropReason::Disconnected,
        DropReason::Closed,
        DropReason::Aqm,
        DropReason::Expired,
    ];
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Disconnected => "disconnected",
            DropReason::Closed => "closed",
            DropReason::Aqm => "aqm",
            DropReason::Expired => "expired",
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a packet was refused at the door: it was never accepted, is not counted as
/// enqueued, and goes straight back to the caller (counted per reason per shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The handle names no stream (never opened, or its slot was reused).
    UnknownStream,
    /// The stream was closed.
    Closed,
    /// The stream was disconnected (S8) and must be reopened.
    Disconnected,
    /// Length 0 or above `max_packet_bytes`.
    InvalidLength,
    /// Every packet descriptor is in use: shard capacity, not the stream's fault.
    PoolExhausted,
}

impl RefuseReason {
    /// Number of reasons.
    pub const COUNT: usize = 5;
    /// All reasons, in counter order.
    pub const ALL: [RefuseReason; Self::COUNT] = [
        RefuseReason::UnknownStream,
        RefuseReason::Closed,
        RefuseReason::Disconnected,
        RefuseReason::InvalidLength,
        RefuseReason::PoolExhausted,
    ];
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::UnknownStream => "unknown_stream",
            RefuseReason::Closed => "closed",
            RefuseReason::Disconnected => "disconnected",
            RefuseReason::InvalidLength => "invalid_length",
            RefuseReason::PoolExhausted => "pool_exhausted",
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one priority, kept under each stream's own (base) priority.
///
/// Conservation (S11): `enqueued + moved_in == dequeued + dropped.sum() + queued +
/// moved_out`, where `moved_*` count queued packets carried along when a stream's
/// priority is changed by [`crate::sched::Scheduler::update`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriorityStats {
    /// Packets accepted or tail-dropped.
    pub enqueued: u64,
    /// Packets dequeued.
    pub dequeued: u64,
    /// Bytes dequeued.
    pub dequeued_bytes: u64,
    /// Drops, indexed by [`DropReason`] order.
    pub dropped: [u64; DropReason::COUNT],
    /// Packets queued now.
    pub queued: u64,
    /// Queued packets carried in from another priority by a stream update.
    pub moved_in: u64,
    /// Queued packets carried out to another priority by a stream update.
    pub moved_out: u64,
    /// Promotions into the aging lane (S9).
    pub promotions: u64,
    /// Packets whose sojourn exceeded the priority's budget (S10).
    pub budget_violations: u64,
    /// WARNING signals raised (S7).
    pub warnings: u64,
    /// CRITICAL signals raised (S7).
    pub criticals: u64,
    /// Streams disconnected (S8).
    pub disconnects: u64,
}

impl PriorityStats {
    /// Total drops over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
    /// `true` when the S11 identity holds.
    pub fn is_conserved(&self) -> bool {
        self.enqueued + self.moved_in
            == self.dequeued + self.dropped_total() + self.queued + self.moved_out
    }
    pub(crate) fn add(&mut self, o: &PriorityStats) {
        self.enqueued += o.enqueued;
        self.dequeued += o.dequeued;
        self.dequeued_bytes += o.dequeued_bytes;
        for (a, b) in self.dropped.iter_mut().zip(o.dropped) {
            *a += b;
        }
        self.queued += o.queued;
        self.moved_in += o.moved_in;
        self.moved_out += o.moved_out;
        self.promotions += o.promotions;
        self.budget_violations += o.budget_violations;
        self.warnings += o.warnings;
        self.criticals += o.criticals;
        self.disconnects += o.disconnects;
    }
}

/// Service given by one tier (by the tier that served it, promoted streams included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets served.
    pub packets: u64,
    /// Bytes served.
    pub bytes: u64,
}

impl ServiceStats {
    fn plus(self, o: ServiceStats) -> ServiceStats {
        ServiceStats {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }

    fn minus(self, o: ServiceStats) -> ServiceStats {
        ServiceStats {
            packets: self.packets - o.packets,
            bytes: self.bytes - o.bytes,
        }
    }
}

/// What each tier and the aging lane served, without a per-class count on the hot
/// path: a packet served by its own tier is already counted in its priority's
/// `dequeued` counters, so a tier's service is derived from those of the priorities
/// it holds. Only the lane counts per packet (per priority, so its share can be taken
/// out). A policy change first folds each tier's service so far into `base`, under the
/// mapping that earned it. A packet served by its own tier costs a branch here instead
/// of two increments, which cost about 5% of the time at 4K streams (BENCHMARKS).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServiceBook {
    /// Per tier index: its service up to the last fold.
    base: [ServiceStats; MAX_TIERS],
    /// Per priority: its own-tier service at the last fold.
    mark: [ServiceStats; PRIORITIES],
    /// Per priority: served by the aging lane.
    lane: [ServiceStats; PRIORITIES],
}

impl ServiceBook {
    /// Priority `p`'s service by its own tier (not the lane) so far.
    fn own(&self, p: usize, stats: &PriorityStats) -> ServiceStats {
        ServiceStats {
            packets: stats.dequeued,
            bytes: stats.dequeued_bytes,
        }
        .minus(self.lane[p])
    }

    /// A packet of `len` bytes of priority `p` served by the aging lane.
    #[inline]
    pub(crate) fn lane_served(&mut self, p: usize, len: u32) {
        let l = &mut self.lane[p];
        l.packets += 1;
        l.bytes += u64::from(len);
    }

    /// What tier `t` served, `tier_of` being the mapping in force since the last fold.
    pub(crate) fn tier(
        &self,
        t: usize,
        tier_of: impl Fn(u8) -> usize,
        stats: &[PriorityStats; PRIORITIES],
    ) -> ServiceStats {
        let mut served = self.base[t];
        for (p, ps) in stats.iter().enumerate() {
            if tier_of(p as u8) == t {
                served = served.plus(self.own(p, ps).minus(self.mark[p]));
            }
        }
        served
    }

    /// What the aging lane served.
    pub(crate) fn lane(&self) -> ServiceStats {
        self.lane
            .iter()
            .fold(ServiceStats::default(), |a, &l| a.plus(l))
    }

    /// Before the mapping `tier_of` (in force until now) changes: books each tier's
    /// service so far under it.
    pub(crate) fn fold(
        &mut self,
        tier_of: impl Fn(u8) -> usize,
        stats: &[PriorityStats; PRIORITIES],
    ) {
        for t in 0..MAX_TIERS {
            self.base[t] = self.tier(t, &tier_of, stats);
        }
        for (p, ps) in stats.iter().enumerate() {
            self.mark[p] = self.own(p, ps);
        }
    }
}

/// Counters of the whole scheduler (one shard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Sum of the per-priority counters (for a shard, `moved_in == moved_out`).
    pub totals: PriorityStats,
    /// Refusals, indexed by [`RefuseReason`] order.
    pub refused: [u64; RefuseReason::COUNT],
    /// Events that did not fit the event queue.
    pub events_lost: u64,
    /// Packet descriptors in use (queued plus awaiting reclaim).
    pub descriptors_in_use: u32,
    /// Descriptors the pool holds.
    pub descriptor_capacity: u32,
    /// Dropped packets awaiting [`crate::sched::Scheduler::pop_reclaimed`].
    pub awaiting_reclaim: u64,
    /// Streams open (including disconnected ones not yet closed).
    pub open_streams: u32,
    /// Stream slots retired after 2^32 uses, so that no handle can alias (never reused).
    pub retired_slots: u32,
}

impl ShardStats {
    /// `true` when the S11 identity holds for the shard.
    pub fn is_conserved(&self) -> bool {
        self.totals.is_conserved() && self.totals.moved_in == self.totals.moved_out
    }
}

/// Highest sojourn the histograms track exactly, in ns (larger values are clamped).
pub const SOJOURN_MAX_NS: u64 = 100_000_000_000;

/// A fresh, empty sojourn histogram of the shape the scheduler records into.
pub fn new_sojourn_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, SOJOURN_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// The current budget window (S10): where it ends, and each priority's sent and
/// over-budget counts when it began. The window's own counts are the differences from
/// the running totals (`PriorityStats::dequeued` and `budget_violations`, which are
/// never reset), so a decision pays for no extra counter.
#[derive(Debug)]
pub(crate) struct BudgetWindow {
    dequeued_at_start: [u64; PRIORITIES],
    over_at_start: [u64; PRIORITIES],
    pub(crate) end: u64,
}

impl BudgetWindow {
    /// A window ending at `end` that starts from the running totals `stats`.
    pub(crate) fn new(end: u64, stats: &[PriorityStats; PRIORITIES]) -> Self {
        Self {
            dequeued_at_start: stats.map(|s| s.dequeued),
            over_at_start: stats.map(|s| s.budget_violations),
            end,
        }
    }

    /// Packets of priority `p` sent in this window (`stats` the running totals).
    pub(crate) fn samples(&self, p: usize, stats: &PriorityStats) -> u64 {
        stats.dequeued.wrapping_sub(self.dequeued_at_start[p])
    }

    /// Of those, the ones whose sojourn exceeded the budget.
    pub(crate) fn over(&self, p: usize, stats: &PriorityStats) -> u64 {
        stats.budget_violations.wrapping_sub(self.over_at_start[p])
    }

    /// `p95 > budget` exactly when more than 5% of the window's samples exceeded it.
    pub(crate) fn p95_over(&self, p: usize, stats: &PriorityStats) -> bool {
        self.over(p, stats) * 20 > self.samples(p, stats)
    }
}
