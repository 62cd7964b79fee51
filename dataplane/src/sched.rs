//! The sans-IO hierarchical fair-queueing scheduler (DESIGN.md section 3, S1-S14).
//!
//! [`Scheduler`] is a state machine: packets go in with [`Scheduler::enqueue`], decisions
//! come out of [`Scheduler::dequeue`], and time is always an argument (`now`, in
//! nanoseconds on any monotonic clock the caller likes). It performs no syscalls, reads
//! no clock, takes no lock, spawns nothing, logs nothing, and allocates only when it is
//! built and when streams are opened: the same inputs give the same decisions (S12).
//!
//! # Call order
//!
//! 1. Build it with a [`SchedulerConfig`] (capacities) and a [`Policy`].
//! 2. [`open`](Scheduler::open) streams; keep the [`StreamId`]s.
//! 3. Loop, bounded per iteration:
//!    - [`enqueue`](Scheduler::enqueue) arriving packets; a packet that is refused or
//!      tail-dropped comes back in the error, so the caller always gets its buffer back;
//!    - take up to a batch of packets with [`dequeue_batch`](Scheduler::dequeue_batch)
//!      (or one at a time with [`dequeue`](Scheduler::dequeue); both make the same
//!      decisions): it ends when the batch is full, or says when the next packet
//!      becomes eligible (link pacing and rate caps), or that nothing is queued;
//!    - drain [`pop_event`](Scheduler::pop_event) (backpressure, disconnects,
//!      promotions, budget violations) and [`pop_reclaimed`](Scheduler::pop_reclaimed)
//!      (packets dropped inside the scheduler: AQM, expiry, disconnect, close);
//!    - at a batch boundary, [`set_policy`](Scheduler::set_policy) if a new one arrived.
//!
//! ```
//! use std::sync::Arc;
//! use qos_dataplane::sched::{Next, Policy, Scheduler, SchedulerConfig, StreamConfig};
//!
//! let mut sched: Scheduler<&str> =
//!     Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
//! let voice = sched.open(StreamConfig::with_priority(7)).unwrap();
//! let bulk = sched.open(StreamConfig::with_priority(1)).unwrap();
//! sched.enqueue(0, bulk, "bulk-1", 1200).unwrap();
//! sched.enqueue(0, voice, "voice-1", 200).unwrap();
//! let Next::Packet(first) = sched.dequeue(10) else { panic!("two packets queued") };
//! assert_eq!(first.packet, "voice-1", "the High tier starts ahead");
//! assert_eq!(first.sojourn_ns, 10);
//! ```
//!
//! How it decides is described in `wfq` (tiers and streams), `shaper` and `throttle`
//! (link pacing and caps), `aging` (starvation guard), `codel` (queue-delay control)
//! and `docs/DECISIONS.md`. The hot path (enqueue, dequeue) reads in one file, `hot`;
//! stream lifecycle is in `lifecycle`, the value types in `types`.

mod aging;
mod codel;
mod events;
mod hot;
mod hugepage;
mod lifecycle;
pub mod policy;
mod pool;
mod prefetch;
mod priority;
mod shaper;
mod share;
mod sojourn;
mod stats;
mod stream;
mod throttle;
mod types;
mod vtime;
mod wfq;

use std::sync::Arc;

use hdrhistogram::Histogram;

pub use events::Event;
pub use policy::{AqmSpec, LinkRate, Policy, PolicyError, PolicySpec, TierSpec};
pub use priority::{Priority, PriorityOutOfRange};
pub use share::LinkShare;
pub use stats::{
    DropReason, PriorityStats, RefuseReason, SOJOURN_MAX_NS, ServiceStats, ShardStats,
    new_sojourn_histogram,
};
pub use stream::{RateCap, StreamConfig, StreamId, StreamStats};
pub use types::{
    BatchEnd, ConfigError, Dequeued, Next, Reclaimed, Rejected, Rejection, SchedulerConfig,
    StreamError, TierStats,
};

use codel::CodelParams;
use events::EventQueue;
use policy::{MAX_TIERS, PRIORITIES};
use pool::{Fifo, NIL, Pool};
use shaper::TokenBucket;
use stats::{BudgetWindow, ServiceBook};
use stream::{Flags, Stream};
use throttle::Caps;
use wfq::Wfq;

/// How much longer than the aging timeout a lowest-tier packet may wait (S9).
const AGING_GRACE_NS: u64 = 1_000_000_000;

/// The numeric part of a policy, laid out for the hot path.
#[derive(Clone, Copy, Debug)]
struct Compiled {
    max_depth: u32,
    warn_at: u32,
    /// WARNING clears and strikes reset once the queue is at or below this.
    clear_at: u32,
    strikes: u8,
    disconnect: bool,
    budgets: [u64; PRIORITIES],
    window_ns: u64,
    /// Aging timeout (`u64::MAX`: off).
    aging_ns: u64,
    /// Lowest-tier packets older than this are dropped as `expired` (`u64::MAX`: off).
    expire_ns: u64,
    /// CoDel per priority (`None`: no queue-delay control there).
    codel: [Option<CodelParams>; PRIORITIES],
    max_packet: u32,
    cap_multiplier: f64,
}

/// The aging timeout in force under `p` (S9): none when aging is off, or when the
/// policy has a single tier, which has nothing to age into (promotion would only move
/// a stream's service from its own tier's other streams to it: a red-team review found
/// a promoted stream of a flat policy taking half the link, the rest of its tier
/// losing half their shares).
fn aging_timeout(p: &Policy) -> Option<u64> {
    p.spec().aging_timeout_ns.filter(|_| p.tiers().len() > 1)
}

impl Compiled {
    fn of(p: &Policy) -> Self {
        let s = p.spec();
        let depth = u64::from(s.max_queue_depth);
        let warn_at = (depth * u64::from(s.warning_percent)).div_ceil(100).max(1) as u32;
        let clear_at = (depth * u64::from(s.clear_percent) / 100) as u32;
        let aging_ns = aging_timeout(p).unwrap_or(u64::MAX);
        let codel = std::array::from_fn(|prio| {
            let budget = s.latency_budget_ns[prio]?;
            if !s.aqm {
                return None;
            }
            let tier = &s.tiers[p.tier_of(prio as u8)];
            Some(match tier.aqm {
                Some(a) => CodelParams {
                    target_ns: a.target_ns,
                    interval_ns: a.interval_ns,
                },
                None => CodelParams::from_budget(budget),
            })
        });
        Self {
            max_depth: s.max_queue_depth,
            warn_at,
            clear_at,
            strikes: s.critical_strikes,
            disconnect: s.disconnect,
            budgets: s.latency_budget_ns.map(|b| b.unwrap_or(u64::MAX)),
            window_ns: s.budget_window_ns,
            aging_ns,
            expire_ns: aging_ns.saturating_add(AGING_GRACE_NS),
            codel,
            max_packet: s.max_packet_bytes,
            cap_multiplier: s.cap_burst_multiplier,
        }
    }
}

/// The sans-IO scheduler of one shard. See the [module docs](self) for the call order.
#[derive(Debug)]
pub struct Scheduler<P> {
    policy: Arc<Policy>,
    c: Compiled,
    streams: Vec<Stream>,
    free_streams: Fifo,
    open_streams: u32,
    /// Slots whose generation is exhausted: never reused, so handles never alias.
    retired_slots: u32,
    pool: Pool<P>,
    reclaim: Fifo,
    reclaim_len: u64,
    wfq: Wfq,
    link: Option<TokenBucket>,
    caps: Caps,
    prio_stats: [PriorityStats; PRIORITIES],
    /// Bytes of the packets counted in each priority's `enqueued` (kept apart so that a
    /// `PriorityStats` stays two cache lines).
    offered_bytes: [u64; PRIORITIES],
    service: ServiceBook,
    refused: [u64; RefuseReason::COUNT],
    sojourn: sojourn::Sojourns,
    /// Whether dequeues record into `sojourn` (off only to measure its cost, P8).
    record_sojourn: bool,
    window: BudgetWindow,
    events: EventQueue,
    /// When the aging guard next looks at a stream (`u64::MAX`: aging off).
    aging_next: u64,
    /// `now` of the last `dequeue` or `dequeue_batch` call (CoDel states are reset
    /// after a longer gap than `codel::STALE_AFTER_NS`).
    last_call: u64,
    now: u64,
}

impl<P> Scheduler<P> {
    /// A scheduler with room for `config`'s streams and packets, running `policy`
    /// from time `0`.
    pub fn new(config: SchedulerConfig, policy: Arc<Policy>) -> Result<Self, ConfigError> {
        let check = |field, value: u32, max: u32| {
            if value == 0 || value > max {
                Err(ConfigError {
                    field,
                    value: value.into(),
                    expected: "1..=2^31",
                })
            } else {
                Ok(())
            }
        };
        check("max_streams", config.max_streams, 1 << 31)?;
        check("max_packets", config.max_packets, 1 << 31)?;
        check("event_capacity", config.event_capacity, 1 << 31)?;
        let c = Compiled::of(&policy);
        let too_big = |field, value: u32| ConfigError {
            field,
            value: value.into(),
            expected: "a capacity this machine can allocate",
        };
        let mut streams = Vec::new();
        streams
            .try_reserve_exact(config.max_streams as usize)
            .map_err(|_| too_big("max_streams", config.max_streams))?;
        hugepage::advise(&streams);
        let pool = Pool::try_with_capacity(config.max_packets)
            .ok_or_else(|| too_big("max_packets", config.max_packets))?;
        let events = EventQueue::try_with_capacity(config.event_capacity as usize)
            .ok_or_else(|| too_big("event_capacity", config.event_capacity))?;
        let mut sched = Self {
            c,
            streams,
            free_streams: Fifo::EMPTY,
            open_streams: 0,
            retired_slots: 0,
            pool,
            reclaim: Fifo::EMPTY,
            reclaim_len: 0,
            wfq: Wfq::new(),
            link: None,
            caps: Caps::new(),
            prio_stats: [PriorityStats::default(); PRIORITIES],
            offered_bytes: [0; PRIORITIES],
            service: ServiceBook::default(),
            refused: [0; RefuseReason::COUNT],
            sojourn: sojourn::Sojourns::new(),
            record_sojourn: true,
            // Ended: the first dequeue call opens the first window, wherever the
            // caller's clock starts (S12).
            window: BudgetWindow::new(0, &[PriorityStats::default(); PRIORITIES]),
            events,
            aging_next: 0,
            last_call: 0,
            now: 0,
            policy: policy.clone(),
        };
        sched.set_policy(0, policy);
        Ok(sched)
    }

    /// Adopts `policy` at time `now` (ns, the caller's clock); it governs the very next
    /// decision. Time before `now` is credited to the link bucket at the old rate, after
    /// it at the new one (S5). Backlogged streams keep their queues (a lowered depth only
    /// refuses further growth). Rate caps' buckets follow a new `max_packet_bytes` or
    /// `cap_burst_multiplier` (tokens held are kept). A class whose quanta change (the
    /// quantum, a tier's base weight, a remap) caps its streams' credit at one new
    /// quantum. No allocation; O(classes + parked streams), plus O(the cap table) when
    /// either of those two settings changes, O(listed streams of the class) for a class
    /// whose quanta change, and O(streams) when the mapping of priorities to tiers
    /// changes or aging is switched off.
    pub fn set_policy(&mut self, now: u64, policy: Arc<Policy>) {
        let now = self.advance(now);
        let mut tier_of = [0u8; PRIORITIES];
        for (p, t) in tier_of.iter_mut().enumerate() {
            *t = policy.tier_of(p as u8) as u8;
        }
        let remapped = (0..PRIORITIES as u8).any(|p| self.wfq.tier_of(p) != policy.tier_of(p));
        if remapped || aging_timeout(&policy).is_none() {
            self.end_promotions();
        }
        let caps_resized = self.c.max_packet != policy.spec().max_packet_bytes
            || self.c.cap_multiplier != policy.spec().cap_burst_multiplier;
        self.c = Compiled::of(&policy);
        if caps_resized {
            self.resize_caps();
        }
        self.aging_next = now;
        // A shorter window applies from now; a longer one from the next window.
        self.window.end = self.window.end.min(now.saturating_add(self.c.window_ns));
        // Each tier's service so far, under the mapping that earned it.
        self.service.fold(|p| self.wfq.tier_of(p), &self.prio_stats);
        let mut shares = [0u8; MAX_TIERS];
        for (share, tier) in shares.iter_mut().zip(policy.tiers()) {
            *share = tier.share_percent;
        }
        self.wfq.configure(
            &mut self.streams,
            tier_of,
            &shares[..policy.tiers().len()],
            policy.spec().quantum_bytes,
        );
        self.link = match (policy.spec().link, self.link.take()) {
            (None, _) => None,
            (Some(l), Some(mut b)) => {
                b.reconfigure(l.rate_bps, l.burst_bytes, now);
                Some(b)
            }
            (Some(l), None) => Some(TokenBucket::new(l.rate_bps, l.burst_bytes, now)),
        };
        self.rewake_parked();
        self.policy = policy;
    }

    /// Returns every promoted stream to its own tier (before a policy change moves tiers
    /// or switches aging off). O(streams). Streams still old enough are promoted again
    /// by the aging guard under the new policy.
    fn end_promotions(&mut self) {
        for s in 0..self.streams.len() as u32 {
            if self.streams[s as usize].has(Flags::PROMOTED) {
                self.demote(s);
            }
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Version of the policy in force (C2).
    pub fn policy_version(&self) -> u64 {
        self.policy.version()
    }

    /// Time never runs backwards inside: an earlier `now` is taken as the latest seen.
    #[inline(always)]
    fn advance(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        self.now
    }

    // ----- outputs -------------------------------------------------------------------

    /// The oldest undelivered event, if any.
    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The oldest packet dropped inside the scheduler (AQM, expiry, disconnect or close),
    /// handed back so the embedder can recycle its buffer. Its descriptor is freed now.
    pub fn pop_reclaimed(&mut self) -> Option<Reclaimed<P>> {
        if self.reclaim.head == NIL {
            return None;
        }
        let d = self.pool.pop_front(&mut self.reclaim);
        let desc = self.pool.get(d);
        let stream = StreamId::from_raw(desc.stamp);
        let reason = DropReason::ALL[(desc.len as usize).min(DropReason::COUNT - 1)];
        let packet = self
            .pool
            .release(d)
            .expect("a reclaimed descriptor holds its packet");
        self.reclaim_len -= 1;
        Some(Reclaimed {
            stream,
            packet,
            reason,
        })
    }

    /// Counters of `priority`.
    pub fn priority_stats(&self, priority: Priority) -> PriorityStats {
        self.prio_stats[priority.index()]
    }

    /// Bytes offered to `priority` so far: the lengths of the packets counted in its
    /// [`PriorityStats::enqueued`] (accepted or tail-dropped). The runtime measures a
    /// tier's demand with it.
    pub fn offered_bytes(&self, priority: Priority) -> u64 {
        self.offered_bytes[priority.index()]
    }

    /// Counters of tier `tier` under the current policy, or `None` past the last tier.
    pub fn tier_stats(&self, tier: usize) -> Option<TierStats> {
        if tier >= self.policy.tiers().len() {
            return None;
        }
        let mut totals = PriorityStats::default();
        for p in 0..PRIORITIES as u8 {
            if self.wfq.tier_of(p) == tier {
                totals.add(&self.prio_stats[usize::from(p)]);
            }
        }
        Some(TierStats {
            totals,
            served: self
                .service
                .tier(tier, |p| self.wfq.tier_of(p), &self.prio_stats),
        })
    }

    /// What the aging lane served (S9): lowest-tier streams while promoted, on top of
    /// their own tier's service.
    pub fn aging_lane_stats(&self) -> ServiceStats {
        self.service.lane()
    }

    /// Counters of the whole shard.
    pub fn shard_stats(&self) -> ShardStats {
        let mut totals = PriorityStats::default();
        for ps in &self.prio_stats {
            totals.add(ps);
        }
        ShardStats {
            totals,
            refused: self.refused,
            events_lost: self.events.lost(),
            descriptors_in_use: self.pool.in_use(),
            descriptor_capacity: self.pool.capacity(),
            awaiting_reclaim: self.reclaim_len,
            open_streams: self.open_streams,
            retired_slots: self.retired_slots,
        }
    }

    /// The sojourn histogram of `priority` (ns, since the last
    /// [`Scheduler::drain_sojourn_histograms`]): a new histogram built on each call from
    /// the scheduler's own counts (O(buckets recorded); see `sched/sojourn.rs`), equal
    /// to what recording every sample into it would have given.
    pub fn sojourn_histogram(&self, priority: Priority) -> Histogram<u64> {
        self.sojourn.snapshot(priority.index())
    }

    /// Switches sojourn histogram recording (on by default). Off exists only so that
    /// benchmarks can measure what recording costs (P8); the histograms then stay empty.
    #[doc(hidden)]
    pub fn set_sojourn_recording(&mut self, on: bool) {
        self.record_sojourn = on;
    }

    /// Hands the eight sojourn histograms over (T4): adds what was recorded since the
    /// last call into `into` (reset it first to get only the new samples) and starts
    /// recording from empty. No allocation; O(buckets recorded).
    pub fn drain_sojourn_histograms(&mut self, into: &mut [Histogram<u64>; PRIORITIES]) {
        self.sojourn.drain_into(into);
    }

    /// Bytes of scheduler state per stream slot, open or idle (P2 target: <= 64). A
    /// rate-capped stream adds one cap-table entry.
    pub const fn stream_slot_bytes() -> usize {
        std::mem::size_of::<Stream>()
    }

    /// Bytes per packet descriptor for this packet type (P2 target: <= 32 for a
    /// `u64` handle): the handle, its length, arrival time and the FIFO link.
    pub const fn descriptor_bytes() -> usize {
        std::mem::size_of::<pool::Desc<P>>()
    }

    /// Packets queued in all streams.
    pub fn queued(&self) -> u64 {
        self.prio_stats.iter().map(|p| p.queued).sum()
    }

    /// Packet descriptors free now: how many packets `enqueue` can take before it
    /// refuses `pool_exhausted`. Queued packets hold one each, and so do dropped ones
    /// until [`Scheduler::pop_reclaimed`] hands them back.
    pub fn free_descriptors(&self) -> u32 {
        self.pool.capacity().saturating_sub(self.pool.in_use())
    }
}
