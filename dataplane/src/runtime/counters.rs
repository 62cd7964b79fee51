//! Per-worker counters (T4, STYLE 5): plain integers owned by their worker, published
//! with `Relaxed` stores into the worker's own cache-line-aligned block, read by any
//! thread at any time without stopping the worker.
//!
//! Each word has one writer (its worker) and is monotone or a gauge; a reader sees each
//! word's latest published value, never a torn one, but two words need not come from
//! the same instant (the worker publishes its scheduler counters at most every
//! `publish_interval`, and once more when it stops, so after
//! [`Dataplane::shutdown`](super::Dataplane::shutdown) the totals are exact).

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};
use crate::sched::policy::{MAX_TIERS, PRIORITIES};
use crate::sched::{DropReason, PriorityStats, RefuseReason, ShardStats};

/// What one worker has done, as last published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Worker index.
    pub worker: usize,
    /// Loop iterations run.
    pub iterations: u64,
    /// Clock reading (ns since start) of the worker's latest iteration.
    pub heartbeat_ns: u64,
    /// Version of the policy the worker runs (C2).
    pub policy_version: u64,
    /// Iterations that took longer than the stall budget.
    pub stalls: u64,
    /// Longest iteration seen, in ns.
    pub max_iteration_ns: u64,
    /// Packets taken from the ingress rings.
    pub taken: u64,
    /// Packets handed to the egress and taken by it.
    pub sent: u64,
    /// Bytes of `sent`.
    pub sent_bytes: u64,
    /// Packets dequeued, offered to the egress, not yet taken.
    pub pending: u64,
    /// Packets handed to [`Egress::discard`](super::Egress::discard), all reasons.
    pub discarded: u64,
    /// Packets for a stream never (successfully) opened on this worker.
    pub unknown_stream: u64,
    /// Dequeued packets discarded at shutdown.
    pub shutdown_discarded: u64,
    /// Packets discarded because this worker's egress panicked: the ones it was
    /// offering when it did, and every packet that reached the worker afterwards (its
    /// queued ones are counted by the scheduler as dropped `closed`). The worker
    /// calls that egress no more.
    pub egress_failed: u64,
    /// Producers whose burst (`enqueue_quiet` ... `flush`) was still open a second into
    /// this worker's last read of their ring, when the worker gave up waiting: a packet
    /// such a producer pushed afterwards can be left in the ring, never taken. Zero
    /// when every producer flushes (or is dropped) before the stop.
    pub gate_timeouts: u64,
    /// Stream opens the scheduler refused (table full, bad config).
    pub open_failed: u64,
    /// Stream updates or closes the scheduler refused.
    pub control_failed: u64,
    /// Scheduler events that did not fit the event ring.
    pub events_lost: u64,
    /// Records from shared-memory ingress that failed to decode: malformed, a stream
    /// number beyond the table, or a payload the embedder's decoder refused (or
    /// panicked on).
    pub shm_rejected: u64,
    /// Link rate the worker paces to under link sharing (T6), in bit/s (0: no link).
    pub link_rate_bps: u64,
    /// The whole link's allocation per tier (index = tier of the running policy) as
    /// this worker last computed it under link sharing (T6), bit/s: each tier's share
    /// after the shares of tiers that ask for less were handed to the others (water
    /// filling over every worker's demand), plus its share of what no tier asked for.
    /// They add up to the link rate; all zero without a link rate.
    pub tier_alloc_bps: [u64; MAX_TIERS],
    /// The scheduler's counters (per priority totals, refusals, queue state).
    pub shard: ShardStats,
    /// Per-priority counters of the scheduler.
    pub priorities: [PriorityStats; PRIORITIES],
    /// Bytes served per tier (index = tier of the running policy; the last entry is the
    /// aging lane).
    pub tier_bytes: [u64; MAX_TIERS + 1],
    /// Packets shed at ingress by degrade, per priority (O5): handed to
    /// [`Egress::discard`](super::Egress::discard) with [`DiscardReason::Shed`]
    /// (counted in `discarded`), never seen by the scheduler.
    ///
    /// [`DiscardReason::Shed`]: super::DiscardReason::Shed
    pub shed: [u64; PRIORITIES],
}

impl WorkerStats {
    /// Runtime conservation (S11 across ring, scheduler and egress): every packet taken
    /// from the rings was sent, discarded with a reason, is queued in the scheduler, or
    /// is pending at the egress. Exact once the worker has stopped.
    pub fn is_conserved(&self) -> bool {
        self.shard.is_conserved()
            && self.taken
                == self.sent
                    + self.discarded
                    + self.shard.totals.queued
                    + self.pending
                    + self.shard.awaiting_reclaim
    }
}

/// One single-writer counter in its own cache line (a producer's ring-full count).
#[derive(Debug, Default)]
pub(crate) struct Gauge(CachePadded<AtomicU64>);

impl Gauge {
    /// Publishes `v` (its one writer only). Relaxed: a lone word, read on its own
    /// (partner: `read`).
    #[inline]
    pub(crate) fn publish(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The latest published value (any thread). Relaxed: partner of `publish`.
    pub(crate) fn read(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const PRIO_FIELDS: usize = 12 + DropReason::COUNT;
const SCALARS: usize = 19;
const SHARD_FIELDS: usize = 5 + RefuseReason::COUNT;
const WORDS: usize = SCALARS + SHARD_FIELDS + PRIORITIES * PRIO_FIELDS + 2 * MAX_TIERS + 1;

/// The published words of one worker. `pub` only so that the loom models reach it
/// (`runtime::loom_access`, under `--cfg qos_loom`); the API exposes [`WorkerStats`].
#[derive(Debug)]
pub struct Counters {
    words: CachePadded<[AtomicU64; WORDS]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    /// All words zero.
    pub fn new() -> Self {
        Self {
            words: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Publishes `s` (worker only). `Relaxed`: each word is read on its own; nothing
    /// else is published through it (partner: `read`'s Relaxed loads).
    pub fn publish(&self, s: &WorkerStats) {
        let mut words = [0u64; WORDS];
        encode(s, &mut words);
        for (w, v) in self.words.iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// Publishes only the words that change every iteration (worker only).
    #[inline]
    pub fn publish_hot(&self, s: &WorkerStats) {
        let hot = [s.iterations, s.heartbeat_ns, s.taken, s.sent, s.sent_bytes];
        for (w, v) in self.words.iter().skip(1).zip(hot) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The latest published values (any thread).
    pub fn read(&self, worker: usize) -> WorkerStats {
        let mut words = [0u64; WORDS];
        for (v, w) in words.iter_mut().zip(self.words.iter()) {
            // Relaxed: partner of `publish`'s Relaxed stores; one word at a time.
            *v = w.load(Ordering::Relaxed);
        }
        let mut s = decode(&words);
        s.worker = worker;
        s
    }
}

fn encode(s: &WorkerStats, w: &mut [u64; WORDS]) {
    let scalars = [
        s.gate_timeouts,
        s.iterations,
        s.heartbeat_ns,
        s.taken,
        s.sent,
        s.sent_bytes,
        s.policy_version,
        s.stalls,
        s.max_iteration_ns,
        s.pending,
        s.discarded,
        s.unknown_stream,
        s.shutdown_discarded,
        s.open_failed,
        s.control_failed,
        s.events_lost,
        s.shm_rejected,
        s.link_rate_bps,
        s.egress_failed,
    ];
    let mut i = 0;
    let mut put = |v: u64| {
        w[i] = v;
        i += 1;
    };
    scalars.into_iter().for_each(&mut put);
    let sh = &s.shard;
    for v in [
        sh.events_lost,
        u64::from(sh.descriptors_in_use),
        u64::from(sh.descriptor_capacity),
        sh.awaiting_reclaim,
        (u64::from(sh.open_streams) << 32) | u64::from(sh.retired_slots),
    ] {
        put(v);
    }
    sh.refused.into_iter().for_each(&mut put);
    for (p, shed) in s.priorities.iter().zip(s.shed) {
        let mut words = prio_words(p);
        words[11] = shed;
        words.into_iter().for_each(&mut put);
    }
    s.tier_bytes.into_iter().for_each(&mut put);
    s.tier_alloc_bps.into_iter().for_each(&mut put);
}

fn prio_words(p: &PriorityStats) -> [u64; PRIO_FIELDS] {
    let mut out = [0; PRIO_FIELDS];
    let head = [
        p.enqueued,
        p.dequeued,
        p.dequeued_bytes,
        p.queued,
        p.moved_in,
        p.moved_out,
        p.promotions,
        p.budget_violations,
        p.warnings,
        p.criticals,
        p.disconnects,
        0,
    ];
    out[..12].copy_from_slice(&head);
    out[12..].copy_from_slice(&p.dropped);
    out
}

fn decode(w: &[u64; WORDS]) -> WorkerStats {
    let mut i = 0;
    let mut get = || {
        i += 1;
        w[i - 1]
    };
    let gate_timeouts = get();
    let mut s = WorkerStats {
        gate_timeouts,
        iterations: get(),
        heartbeat_ns: get(),
        taken: get(),
        sent: get(),
        sent_bytes: get(),
        policy_version: get(),
        stalls: get(),
        max_iteration_ns: get(),
        pending: get(),
        discarded: get(),
        unknown_stream: get(),
        shutdown_discarded: get(),
        open_failed: get(),
        control_failed: get(),
        events_lost: get(),
        shm_rejected: get(),
        link_rate_bps: get(),
        egress_failed: get(),
        ..WorkerStats::default()
    };
    let sh = &mut s.shard;
    sh.events_lost = get();
    sh.descriptors_in_use = get() as u32;
    sh.descriptor_capacity = get() as u32;
    sh.awaiting_reclaim = get();
    let streams = get();
    sh.open_streams = (streams >> 32) as u32;
    sh.retired_slots = streams as u32;
    for r in sh.refused.iter_mut() {
        *r = get();
    }
    for (p, shed) in s.priorities.iter_mut().zip(s.shed.iter_mut()) {
        let mut words = [0u64; PRIO_FIELDS];
        words.iter_mut().for_each(|v| *v = get());
        *shed = words[11];
        *p = PriorityStats {
            enqueued: words[0],
            dequeued: words[1],
            dequeued_bytes: words[2],
            queued: words[3],
            moved_in: words[4],
            moved_out: words[5],
            promotions: words[6],
            budget_violations: words[7],
            warnings: words[8],
            criticals: words[9],
            disconnects: words[10],
            dropped: std::array::from_fn(|k| words[12 + k]),
        };
    }
    let mut totals = PriorityStats::default();
    for p in &s.priorities {
        totals.add(p);
    }
    s.shard.totals = totals;
    for b in s.tier_bytes.iter_mut() {
        *b = get();
    }
    for b in s.tier_alloc_bps.iter_mut() {
        *b = get();
    }
    s
}

#[cfg(all(test, not(qos_loom)))]
mod tests {
    use super::*;

    #[test]
    fn t4_counters_round_trip_every_field() {
        let mut s = WorkerStats {
            worker: 3,
            ..WorkerStats::default()
        };
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        s.iterations = next();
        s.heartbeat_ns = next();
        s.policy_version = next();
        s.stalls = next();
        s.max_iteration_ns = next();
        s.taken = next();
        s.sent = next();
        s.sent_bytes = next();
        s.pending = next();
        s.discarded = next();
        s.unknown_stream = next();
        s.shutdown_discarded = next();
        s.open_failed = next();
        s.control_failed = next();
        s.events_lost = next();
        s.shm_rejected = next();
        s.link_rate_bps = next();
        s.egress_failed = next();
        s.gate_timeouts = next();
        s.shard.events_lost = next();
        s.shard.descriptors_in_use = next() as u32;
        s.shard.descriptor_capacity = next() as u32;
        s.shard.awaiting_reclaim = next();
        s.shard.open_streams = next() as u32;
        s.shard.retired_slots = next() as u32;
        s.shard.refused = std::array::from_fn(|_| next());
        for p in s.priorities.iter_mut() {
            p.enqueued = next();
            p.dequeued = next();
            p.dequeued_bytes = next();
            p.queued = next();
            p.moved_in = next();
            p.moved_out = next();
            p.promotions = next();
            p.budget_violations = next();
            p.warnings = next();
            p.criticals = next();
            p.disconnects = next();
            p.dropped = std::array::from_fn(|_| next());
        }
        let mut totals = PriorityStats::default();
        for p in &s.priorities {
            totals.add(p);
        }
        s.shard.totals = totals;
        s.tier_bytes = std::array::from_fn(|_| next());
        s.tier_alloc_bps = std::array::from_fn(|_| next());
        s.shed = std::array::from_fn(|_| next());
        let c = Counters::new();
        c.publish(&s);
        assert_eq!(c.read(3), s);
    }
}
