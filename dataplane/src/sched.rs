//! The sans-IO hierarchical WFQ scheduler (DESIGN.md section 3, rules S1-S13).
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
//!    - call [`dequeue`](Scheduler::dequeue) up to a batch size: it returns the next
//!      packet, or the time at which the next one becomes eligible (link pacing and rate
//!      caps), or that nothing is queued;
//!    - drain [`pop_event`](Scheduler::pop_event) (backpressure, disconnects,
//!      promotions, budget violations) and [`pop_reclaimed`](Scheduler::pop_reclaimed)
//!      (packets dropped inside the scheduler by a disconnect or a close);
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
//! How it decides is described in `wfq` (tiers, groups, streams), `shaper` (link pacing
//! and caps), `aging` (starvation guard) and `docs/DECISIONS.md`.

mod aging;
mod events;
pub mod policy;
mod pool;
mod shaper;
mod stats;
mod stream;
mod vtime;
mod wfq;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use thiserror::Error;

pub use events::Event;
pub use policy::{LinkRate, Policy, PolicyBuilder, PolicyError, TierSpec};
pub use stats::{
    DropReason, PriorityStats, RefuseReason, SOJOURN_MAX_NS, ServiceStats, ShardStats,
    new_sojourn_histogram,
};
pub use stream::{RateCap, StreamConfig, StreamId, StreamStats};

use events::EventQueue;
use policy::{MAX_BURST_BYTES, MAX_TIERS, PRIORITIES};
use pool::{Fifo, NIL, Pool};
use shaper::TokenBucket;
use stats::BudgetWindow;
use stream::{ACTIVE, DISCONNECTED, FREE, OPEN, PROMOTED, Stream, THROTTLED, WARNED, WEIGHT_SET};
use wfq::Wfq;

/// Capacities fixed when the scheduler is built (the policy can change later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most streams open at once (1..=2^31).
    pub max_streams: u32,
    /// Packet descriptors: most packets queued (or awaiting reclaim) at once.
    pub max_packets: u32,
    /// Events held before further ones are counted as lost.
    pub event_capacity: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_streams: 65_536,
            max_packets: 1 << 20,
            event_capacity: 4_096,
        }
    }
}

/// A capacity in [`SchedulerConfig`] is out of range.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{field}: {value}, expected {expected}")]
pub struct ConfigError {
    /// Field name.
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// What is accepted.
    pub expected: &'static str,
}

/// Why a stream operation failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// The handle names no open stream.
    #[error("stream {0}: unknown (never opened, or closed and its slot reused)")]
    Unknown(StreamId),
    /// The stream was closed.
    #[error("stream {0}: closed")]
    Closed(StreamId),
    /// `reopen` of a stream that is not disconnected.
    #[error("stream {0}: not disconnected, nothing to reopen")]
    NotDisconnected(StreamId),
    /// The stream was disconnected (S8); `reopen` it first.
    #[error("stream {0}: disconnected for ignoring backpressure; reopen it")]
    Disconnected(StreamId),
    /// Every stream slot is in use.
    #[error("max_streams: all {0} stream slots are open")]
    TableFull(u32),
    /// Priority outside 0..=7.
    #[error("priority: {0}, expected 0..=7")]
    Priority(u8),
    /// Weight override of 0.
    #[error("weight: 0, expected 1..=65535")]
    Weight,
    /// A rate cap field out of range.
    #[error("cap.{field}: {value}, expected {expected}")]
    Cap {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
}

/// A packet the scheduler did not keep, handed back with the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected<P> {
    /// The caller's packet, untouched.
    pub packet: P,
    /// Why.
    pub reason: Rejection,
}

/// Refused at the door, or counted as enqueued and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not accepted; counted under [`ShardStats::refused`], not as enqueued.
    Refused(RefuseReason),
    /// Counted as enqueued and dropped (S11): tail drop or the push that disconnected.
    Dropped(DropReason),
}

/// A dequeued packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Dequeued<P> {
    /// The caller's packet.
    pub packet: P,
    /// Its stream.
    pub stream: StreamId,
    /// Its length in bytes, as given to `enqueue`.
    pub len: u32,
    /// The stream's own priority (promotion does not change it).
    pub priority: u8,
    /// Time from enqueue to this dequeue, in ns.
    pub sojourn_ns: u64,
}

/// What [`Scheduler::dequeue`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<P> {
    /// Send this packet now.
    Packet(Dequeued<P>),
    /// Packets are queued but none may go before `until_ns` (pacing or caps).
    Wait {
        /// Earliest time to call `dequeue` again, in ns.
        until_ns: u64,
    },
    /// Nothing is queued.
    Idle,
}

/// A packet dropped inside the scheduler (disconnect or close), handed back for reuse.
#[derive(Debug, PartialEq, Eq)]
pub struct Reclaimed<P> {
    /// Its stream.
    pub stream: StreamId,
    /// The caller's packet.
    pub packet: P,
    /// Why it was dropped (already counted).
    pub reason: DropReason,
}

/// Counters of one tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Sum of the counters of the tier's priorities (under the current policy).
    pub totals: PriorityStats,
    /// What the tier served (promoted streams count where they were served).
    pub served: ServiceStats,
}

/// The numeric part of a policy, laid out for the hot path.
#[derive(Clone, Copy, Debug)]
struct Compiled {
    max_depth: u32,
    warn_at: u32,
    /// WARNING clears and strikes reset once the queue is at or below this.
    clear_at: u32,
    strikes: u8,
    budgets: [u64; PRIORITIES],
    window_ns: u64,
    aging_ns: u64,
    promote_to: u8,
    low_tier: usize,
    max_packet: u32,
    cap_multiplier: f64,
}

impl Compiled {
    fn of(p: &Policy) -> Self {
        let s = p.spec();
        let depth = u64::from(s.max_queue_depth);
        let warn_at = (depth * u64::from(s.warning_percent)).div_ceil(100).max(1) as u32;
        let clear_at = (depth * u64::from(s.clear_percent) / 100) as u32;
        Self {
            max_depth: s.max_queue_depth,
            warn_at,
            clear_at,
            strikes: s.critical_strikes,
            budgets: s.latency_budget_ns.map(|b| b.unwrap_or(u64::MAX)),
            window_ns: s.budget_window_ns,
            aging_ns: s.aging_timeout_ns,
            promote_to: s.promote_to,
            low_tier: p.low_tier(),
            max_packet: s.max_packet_bytes,
            cap_multiplier: s.cap_burst_multiplier,
        }
    }
}

/// A rate-capped stream's bucket.
#[derive(Clone, Copy, Debug)]
struct CapSlot {
    spec: RateCap,
    bucket: TokenBucket,
    /// When the stream's current throttle ends (validates throttle-heap entries).
    until: u64,
    next_free: u32,
}

/// The sans-IO scheduler of one shard. See the [module docs](self) for the call order.
#[derive(Debug)]
pub struct Scheduler<P> {
    policy: Arc<Policy>,
    c: Compiled,
    streams: Vec<Stream>,
    free_streams: Fifo,
    open_streams: u32,
    pool: Pool<P>,
    reclaim: Fifo,
    reclaim_len: u64,
    wfq: Wfq,
    link: Option<TokenBucket>,
    caps: Vec<CapSlot>,
    cap_free: u32,
    /// Capped streams open now: the throttle heap keeps room for one entry each.
    capped: usize,
    throttled: BinaryHeap<Reverse<(u64, u32, u16)>>,
    prio_stats: [PriorityStats; PRIORITIES],
    served: [ServiceStats; MAX_TIERS],
    refused: [u64; RefuseReason::COUNT],
    sojourn: [Histogram<u64>; PRIORITIES],
    window: BudgetWindow,
    events: EventQueue,
    aging_cursor: u32,
    ticks: u32,
    now: u64,
}

impl<P> Scheduler<P> {
    /// A scheduler with room for `config`'s streams and packets, running `policy`.
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
        let pool = Pool::try_with_capacity(config.max_packets)
            .ok_or_else(|| too_big("max_packets", config.max_packets))?;
        let events = EventQueue::try_with_capacity(config.event_capacity as usize)
            .ok_or_else(|| too_big("event_capacity", config.event_capacity))?;
        let mut sched = Self {
            c,
            streams,
            free_streams: Fifo::EMPTY,
            open_streams: 0,
            pool,
            reclaim: Fifo::EMPTY,
            reclaim_len: 0,
            wfq: Wfq::new(),
            link: None,
            caps: Vec::new(),
            cap_free: NIL,
            capped: 0,
            throttled: BinaryHeap::new(),
            prio_stats: [PriorityStats::default(); PRIORITIES],
            served: [ServiceStats::default(); MAX_TIERS],
            refused: [0; RefuseReason::COUNT],
            sojourn: std::array::from_fn(|_| new_sojourn_histogram()),
            window: BudgetWindow::new(c.window_ns),
            events,
            aging_cursor: NIL,
            ticks: 0,
            now: 0,
            policy: policy.clone(),
        };
        sched.set_policy(policy);
        Ok(sched)
    }

    /// Adopts `policy`; it governs the very next decision. Backlogged streams keep their
    /// queues (a lowered depth only refuses further growth). O(groups), no allocation.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        let mut tier_of = [0u8; PRIORITIES];
        for (p, t) in tier_of.iter_mut().enumerate() {
            *t = policy.tier_of(p as u8) as u8;
        }
        let remapped = (0..PRIORITIES as u8).any(|p| self.wfq.tier_of(p) != policy.tier_of(p));
        if remapped || policy.spec().promote_to != self.c.promote_to {
            self.end_promotions();
        }
        self.c = Compiled::of(&policy);
        // A shorter window applies from now; a longer one from the next window.
        self.window.end = self
            .window
            .end
            .min(self.now.saturating_add(self.c.window_ns));
        let mut shares = [0u8; MAX_TIERS];
        for (share, tier) in shares.iter_mut().zip(policy.tiers()) {
            *share = tier.share_percent;
        }
        self.wfq.configure(
            tier_of,
            &shares[..policy.tiers().len()],
            policy.spec().quantum_bytes,
        );
        self.link = match (policy.spec().link, self.link.take()) {
            (None, _) => None,
            (Some(l), Some(mut b)) => {
                b.reconfigure(l.rate_bps, l.burst_bytes, self.now);
                Some(b)
            }
            (Some(l), None) => Some(TokenBucket::new(l.rate_bps, l.burst_bytes, self.now)),
        };
        self.aging_cursor = NIL;
        self.policy = policy;
    }

    /// Returns every promoted stream to its own priority (under the current mapping),
    /// before a policy change moves tiers or the promotion target. O(streams): policy
    /// changes that touch neither skip it. Streams still old enough are promoted again
    /// by the aging cursor under the new policy.
    fn end_promotions(&mut self) {
        for s in 0..self.streams.len() as u32 {
            let st = &self.streams[s as usize];
            if !st.has(PROMOTED) {
                continue;
            }
            if st.has(ACTIVE) {
                self.demote(s);
            } else {
                self.restore_priority(s);
            }
        }
        self.aging_cursor = NIL;
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

    // ----- streams -------------------------------------------------------------------

    /// Opens a stream. Allocates only to grow the cap table for a capped stream.
    pub fn open(&mut self, config: StreamConfig) -> Result<StreamId, StreamError> {
        Self::check_config(&config)?;
        let cap = match config.cap {
            Some(spec) => Some(self.cap_bucket(spec)?),
            None => None,
        };
        let s = if self.free_streams.head != NIL {
            let s = self.free_streams.head;
            self.free_streams.head = self.streams[s as usize].next;
            if self.free_streams.head == NIL {
                self.free_streams.tail = NIL;
            }
            s
        } else if self.streams.len() < self.streams.capacity() {
            // Within the reserved capacity: `push` does not reallocate.
            self.streams.push(Stream::VACANT);
            (self.streams.len() - 1) as u32
        } else {
            return Err(StreamError::TableFull(self.streams.capacity() as u32));
        };
        let cap = cap.map_or(NIL, |(spec, bucket)| self.alloc_cap(spec, bucket));
        let generation = self.streams[s as usize].generation.wrapping_add(1);
        let weight = config.weight.unwrap_or(1 << config.priority);
        let set = if config.weight.is_some() {
            WEIGHT_SET
        } else {
            0
        };
        self.streams[s as usize] = Stream {
            generation,
            weight,
            prio: config.priority,
            base: config.priority,
            flags: OPEN | set,
            cap,
            ..Stream::VACANT
        };
        self.open_streams += 1;
        Ok(StreamId::new(s, generation))
    }

    fn check_config(config: &StreamConfig) -> Result<(), StreamError> {
        if config.priority > 7 {
            return Err(StreamError::Priority(config.priority));
        }
        if config.weight == Some(0) {
            return Err(StreamError::Weight);
        }
        Ok(())
    }

    fn cap_bucket(&self, spec: RateCap) -> Result<(RateCap, TokenBucket), StreamError> {
        if spec.rate_bps == 0 {
            return Err(StreamError::Cap {
                field: "rate_bps",
                value: 0,
                expected: "> 0",
            });
        }
        if let Some(b) = spec.burst_bytes
            && (b < u64::from(self.c.max_packet) || b > MAX_BURST_BYTES)
        {
            let expected = "max_packet_bytes..=2^30";
            return Err(StreamError::Cap {
                field: "burst_bytes",
                value: b,
                expected,
            });
        }
        Ok((
            spec,
            TokenBucket::new(spec.rate_bps, self.cap_burst(spec), self.now),
        ))
    }

    /// Bucket depth of a cap: its own `burst_bytes`, or `burst_multiplier` x 10 ms at
    /// the cap rate, never less than one maximal packet.
    fn cap_burst(&self, spec: RateCap) -> u64 {
        let min = u64::from(self.c.max_packet);
        spec.burst_bytes.unwrap_or_else(|| {
            ((spec.rate_bps as f64 / 800.0 * self.c.cap_multiplier) as u64)
                .clamp(min, MAX_BURST_BYTES)
        })
    }

    fn alloc_cap(&mut self, spec: RateCap, bucket: TokenBucket) -> u32 {
        // One throttle-heap entry per capped stream can be live: keep room for all of
        // them now, so `throttle` (which purges stale entries first) never allocates.
        self.capped += 1;
        if self.throttled.capacity() < self.capped {
            // len <= capacity < capped: afterwards capacity >= capped.
            self.throttled
                .reserve_exact(self.capped - self.throttled.len());
        }
        let slot = CapSlot {
            spec,
            bucket,
            until: 0,
            next_free: NIL,
        };
        if self.cap_free != NIL {
            let i = self.cap_free;
            self.cap_free = self.caps[i as usize].next_free;
            self.caps[i as usize] = slot;
            i
        } else {
            self.caps.push(slot);
            (self.caps.len() - 1) as u32
        }
    }

    fn free_cap(&mut self, i: u32) {
        if i != NIL {
            self.capped -= 1;
            self.caps[i as usize].next_free = self.cap_free;
            self.caps[i as usize].until = u64::MAX;
            self.cap_free = i;
        }
    }

    /// Index of the open (or disconnected) stream `id` names.
    fn lookup(&self, id: StreamId) -> Result<usize, StreamError> {
        let s = id.index() as usize;
        match self.streams.get(s) {
            Some(st) if st.generation == id.generation() && st.state() != FREE => Ok(s),
            Some(st) if st.generation == id.generation() => Err(StreamError::Closed(id)),
            _ => Err(StreamError::Unknown(id)),
        }
    }

    /// Changes priority, weight or cap of an open stream; takes effect at the next
    /// decision. Queued packets move with the stream (counted as `moved_*`).
    pub fn update(&mut self, id: StreamId, config: StreamConfig) -> Result<(), StreamError> {
        let s = self.lookup(id)?;
        if self.streams[s].state() == DISCONNECTED {
            return Err(StreamError::Disconnected(id));
        }
        Self::check_config(&config)?;
        let new_cap = match config.cap {
            Some(spec) => Some(self.cap_bucket(spec)?),
            None => None,
        };
        let was_active = self.streams[s].has(ACTIVE);
        if was_active {
            self.wfq.deactivate(&mut self.streams, s as u32);
        }
        let st = self.streams[s];
        if st.base != config.priority && st.len > 0 {
            let n = u64::from(st.len);
            let from = &mut self.prio_stats[usize::from(st.base)];
            from.queued -= n;
            from.moved_out += n;
            let to = &mut self.prio_stats[usize::from(config.priority)];
            to.queued += n;
            to.moved_in += n;
        }
        let cap = match (new_cap, st.cap) {
            (Some((spec, bucket)), NIL) => self.alloc_cap(spec, bucket),
            (Some((spec, _)), i) => {
                // Keep the tokens held: re-applying a cap must not refill it (S6).
                let burst = self.cap_burst(spec);
                let now = self.now;
                let slot = &mut self.caps[i as usize];
                slot.bucket.reconfigure(spec.rate_bps, burst, now);
                slot.spec = spec;
                i
            }
            (None, i) => {
                self.free_cap(i);
                NIL
            }
        };
        let st = &mut self.streams[s];
        st.base = config.priority;
        st.prio = config.priority;
        st.weight = config.weight.unwrap_or(1 << config.priority);
        st.flags &= !(PROMOTED | WEIGHT_SET);
        if config.weight.is_some() {
            st.flags |= WEIGHT_SET;
        }
        st.cap = cap;
        if cap == NIL {
            st.flags &= !THROTTLED;
        }
        if st.len > 0 && !st.has(THROTTLED) {
            self.wfq.activate(&mut self.streams, s as u32);
        }
        Ok(())
    }

    /// Closes a stream. Queued packets are dropped with reason `closed` and handed back
    /// through [`Scheduler::pop_reclaimed`]. Returns the stream's final counters.
    pub fn close(&mut self, id: StreamId) -> Result<StreamStats, StreamError> {
        let s = self.lookup(id)?;
        let was_open = self.streams[s].state() == OPEN;
        if was_open {
            self.drop_queue(s, DropReason::Closed);
        }
        let stats = StreamStats::of(&self.streams[s], was_open);
        self.free_cap(self.streams[s].cap);
        let st = &mut self.streams[s];
        st.flags = FREE;
        st.cap = NIL;
        st.next = NIL;
        if self.free_streams.tail == NIL {
            self.free_streams.head = s as u32;
        } else {
            self.streams[self.free_streams.tail as usize].next = s as u32;
        }
        self.free_streams.tail = s as u32;
        self.open_streams -= 1;
        Ok(stats)
    }

    /// Reopens a disconnected stream with its previous priority, weight and cap, under
    /// a new handle with fresh counters (the old ones stay in the priority counters).
    pub fn reopen(&mut self, id: StreamId) -> Result<StreamId, StreamError> {
        let s = self.lookup(id)?;
        let st = self.streams[s];
        if st.state() != DISCONNECTED {
            return Err(StreamError::NotDisconnected(id));
        }
        let config = StreamConfig {
            priority: st.base,
            weight: st.has(WEIGHT_SET).then_some(st.weight),
            cap: (st.cap != NIL).then(|| self.caps[st.cap as usize].spec),
        };
        // Validate against the current policy first: a failed reopen leaves the stream
        // as it was (disconnected), not closed.
        Self::check_config(&config)?;
        if let Some(spec) = config.cap {
            self.cap_bucket(spec)?;
        }
        self.close(id)?;
        self.open(config)
    }

    /// Counters of a stream, or `None` if the handle names no open stream.
    pub fn stream_stats(&self, id: StreamId) -> Option<StreamStats> {
        self.lookup(id)
            .ok()
            .map(|s| StreamStats::of(&self.streams[s], false))
    }

    /// Moves every queued packet of stream `s` to the reclaim list, dropped for `reason`.
    fn drop_queue(&mut self, s: usize, reason: DropReason) -> u32 {
        if self.streams[s].has(ACTIVE) {
            self.wfq.deactivate(&mut self.streams, s as u32);
        }
        let st = &mut self.streams[s];
        st.flags &= !(THROTTLED | WARNED | PROMOTED);
        st.prio = st.base;
        if !st.has(WEIGHT_SET) {
            st.weight = 1 << st.base;
        }
        let tag = reclaim_tag(StreamId::new(s as u32, st.generation), reason);
        let n = self
            .pool
            .splice_tagged(&mut st.fifo, &mut self.reclaim, tag);
        st.len = 0;
        st.terminal_dropped += n;
        let ps = &mut self.prio_stats[usize::from(st.base)];
        ps.queued -= u64::from(n);
        ps.dropped[reason.index()] += u64::from(n);
        self.reclaim_len += u64::from(n);
        n
    }

    // ----- enqueue -------------------------------------------------------------------

    /// Offers `packet` (of `len` bytes) to stream `id` at time `now`.
    ///
    /// `Ok` means it is queued. Otherwise the packet comes back with the reason: refused
    /// (unknown, closed or disconnected stream, bad length, descriptor pool exhausted;
    /// not counted as enqueued) or dropped (tail drop on a full queue, or the push that
    /// disconnected the stream; counted as enqueued and dropped, S11). O(1).
    #[inline]
    pub fn enqueue(
        &mut self,
        now: u64,
        id: StreamId,
        packet: P,
        len: u32,
    ) -> Result<(), Rejected<P>> {
        let now = self.advance(now);
        if len == 0 || len > self.c.max_packet {
            return self.refuse(packet, RefuseReason::InvalidLength);
        }
        let s = match self.lookup(id) {
            Ok(s) if self.streams[s].state() == OPEN => s,
            Ok(_) | Err(StreamError::Disconnected(_)) => {
                return self.refuse(packet, RefuseReason::Disconnected);
            }
            Err(StreamError::Closed(_)) => return self.refuse(packet, RefuseReason::Closed),
            Err(_) => return self.refuse(packet, RefuseReason::UnknownStream),
        };
        if self.streams[s].len >= self.c.max_depth {
            return self.overflow(s, packet);
        }
        let d = match self.pool.alloc(packet, len, now) {
            Ok(d) => d,
            Err(packet) => return self.refuse(packet, RefuseReason::PoolExhausted),
        };
        let st = &mut self.streams[s];
        self.pool.push_back(&mut st.fifo, d);
        st.len += 1;
        st.enqueued += 1;
        let ps = &mut self.prio_stats[usize::from(st.base)];
        ps.enqueued += 1;
        ps.queued += 1;
        if st.len >= self.c.warn_at && !st.has(WARNED) {
            st.flags |= WARNED;
            ps.warnings += 1;
            let stream = StreamId::new(s as u32, st.generation);
            self.events.push(Event::BackpressureWarning {
                stream,
                depth: st.len,
            });
        }
        if st.flags & (ACTIVE | THROTTLED) == 0 {
            self.wfq.activate(&mut self.streams, s as u32);
        }
        Ok(())
    }

    fn refuse(&mut self, packet: P, reason: RefuseReason) -> Result<(), Rejected<P>> {
        self.refused[reason.index()] += 1;
        Err(Rejected {
            packet,
            reason: Rejection::Refused(reason),
        })
    }

    /// A push onto a full queue: tail drop plus CRITICAL (S7), or, once the stream has
    /// ignored `critical_strikes` CRITICALs in this episode, disconnection (S8).
    fn overflow(&mut self, s: usize, packet: P) -> Result<(), Rejected<P>> {
        let st = &mut self.streams[s];
        st.enqueued += 1;
        let id = StreamId::new(s as u32, st.generation);
        let base = usize::from(st.base);
        self.prio_stats[base].enqueued += 1;
        if st.strikes >= self.c.strikes {
            let dropped = self.drop_queue(s, DropReason::Disconnected) + 1;
            let st = &mut self.streams[s];
            st.terminal_dropped += 1;
            st.flags = (st.flags & !stream::STATE_MASK) | DISCONNECTED;
            let ps = &mut self.prio_stats[base];
            ps.dropped[DropReason::Disconnected.index()] += 1;
            ps.disconnects += 1;
            self.events.push(Event::Disconnected {
                stream: id,
                dropped,
            });
            return Err(Rejected {
                packet,
                reason: Rejection::Dropped(DropReason::Disconnected),
            });
        }
        st.strikes += 1;
        st.dropped += 1;
        let (depth, strike) = (st.len, st.strikes);
        let ps = &mut self.prio_stats[base];
        ps.dropped[DropReason::QueueFull.index()] += 1;
        ps.criticals += 1;
        self.events.push(Event::BackpressureCritical {
            stream: id,
            depth,
            strike,
        });
        Err(Rejected {
            packet,
            reason: Rejection::Dropped(DropReason::QueueFull),
        })
    }

    // ----- dequeue -------------------------------------------------------------------

    /// The next packet to send at `now`, or when to ask again. O(1) per packet: a
    /// decision looks at no more than a few tiers and groups and one or two streams;
    /// each extra step (a cap throttle, an aging demotion) removes its stream from
    /// contention until the condition changes, so its cost is paid once.
    #[inline]
    pub fn dequeue(&mut self, now: u64) -> Next<P> {
        let now = self.advance(now);
        if now >= self.window.end {
            self.roll_window(now);
        }
        self.release_throttled(now);
        self.aging_tick(now);
        loop {
            let Some((t, gid)) = self.wfq.select() else {
                return self.idle_or_wait();
            };
            let s = self.wfq.drr_head(gid);
            let st = &self.streams[s as usize];
            let head = self.pool.get(st.fifo.head);
            let len = head.len;
            if st.has(PROMOTED) && now.saturating_sub(head.stamp) < self.c.aging_ns {
                self.demote(s);
                continue;
            }
            if st.cap != NIL
                && let Some(wait) = self.caps[st.cap as usize].bucket.wait_for(now, len)
            {
                self.throttle(s, now.saturating_add(wait));
                continue;
            }
            if let Some(link) = &mut self.link {
                if let Some(wait) = link.wait_for(now, len) {
                    return Next::Wait {
                        until_ns: now.saturating_add(wait),
                    };
                }
                link.consume(len);
            }
            return Next::Packet(self.commit(now, t, gid, s, len));
        }
    }

    /// Takes the head packet of stream `s` (selected from group `gid` of tier `t`).
    #[inline]
    fn commit(&mut self, now: u64, t: usize, gid: usize, s: u32, len: u32) -> Dequeued<P> {
        let st = &mut self.streams[s as usize];
        if st.cap != NIL {
            self.caps[st.cap as usize].bucket.consume(len);
        }
        let d = self.pool.pop_front(&mut st.fifo);
        st.len -= 1;
        st.dequeued += 1;
        st.deficit -= len as i32;
        let (id, base, left) = (
            StreamId::new(s, st.generation),
            usize::from(st.base),
            st.len,
        );
        let stamp = self.pool.get(d).stamp;
        let packet = self
            .pool
            .release(d)
            .expect("a queued descriptor holds its packet");
        self.wfq.charge(t, gid, len);
        if left == 0 {
            self.wfq.deactivate(&mut self.streams, s);
            if self.streams[s as usize].has(PROMOTED) {
                self.restore_priority(s);
            }
        } else {
            self.wfq.served(&mut self.streams, s);
        }
        let st = &mut self.streams[s as usize];
        let ps = &mut self.prio_stats[base];
        // The episode ends (WARNING cleared, CRITICAL strikes forgiven) once the queue is
        // at or below the clear watermark, whether or not it had reached WARNING.
        if left <= self.c.clear_at && (st.has(WARNED) || st.strikes > 0) {
            st.flags &= !WARNED;
            st.strikes = 0;
            self.events.push(Event::BackpressureCleared {
                stream: id,
                depth: left,
            });
        }
        ps.dequeued += 1;
        ps.dequeued_bytes += u64::from(len);
        ps.queued -= 1;
        self.served[t].packets += 1;
        self.served[t].bytes += u64::from(len);
        let sojourn_ns = now.saturating_sub(stamp);
        self.sojourn[base].saturating_record(sojourn_ns);
        self.window.samples[base] += 1;
        if sojourn_ns > self.c.budgets[base] {
            self.window.over[base] += 1;
            ps.budget_violations += 1;
        }
        Dequeued {
            packet,
            stream: id,
            len,
            priority: base as u8,
            sojourn_ns,
        }
    }

    /// Parks capped stream `s` until `at` (S6): it leaves contention, others go on.
    fn throttle(&mut self, s: u32, at: u64) {
        if self.throttled.len() == self.throttled.capacity() {
            // Only stale entries (closed, disconnected or uncapped streams) can fill it:
            // live ones are at most one per capped stream, and there is room for those.
            let (streams, caps) = (&self.streams, &self.caps);
            self.throttled
                .retain(|Reverse((at, s, g))| is_live(streams, caps, *at, *s, *g));
        }
        self.wfq.deactivate(&mut self.streams, s);
        let st = &mut self.streams[s as usize];
        st.flags |= THROTTLED;
        self.caps[st.cap as usize].until = at;
        self.throttled.push(Reverse((at, s, st.generation)));
    }

    /// Nothing is eligible: wait for the earliest live throttle, or report idle.
    fn idle_or_wait(&mut self) -> Next<P> {
        while let Some(&Reverse((at, s, generation))) = self.throttled.peek() {
            if is_live(&self.streams, &self.caps, at, s, generation) {
                return Next::Wait { until_ns: at };
            }
            self.throttled.pop();
        }
        Next::Idle
    }

    /// Returns to contention every capped stream whose throttle has ended.
    fn release_throttled(&mut self, now: u64) {
        while let Some(&Reverse((at, s, generation))) = self.throttled.peek() {
            if at > now {
                return;
            }
            self.throttled.pop();
            if is_live(&self.streams, &self.caps, at, s, generation) {
                let st = &mut self.streams[s as usize];
                st.flags &= !THROTTLED;
                if st.len > 0 {
                    self.wfq.activate(&mut self.streams, s);
                }
            }
        }
    }

    /// Closes the budget window: a priority whose p95 sojourn exceeded its budget emits
    /// [`Event::BudgetViolation`] (S10).
    fn roll_window(&mut self, now: u64) {
        for p in 0..PRIORITIES {
            if self.c.budgets[p] != u64::MAX && self.window.p95_over(p) {
                self.events.push(Event::BudgetViolation {
                    priority: p as u8,
                    samples: self.window.samples[p],
                    over_budget: self.window.over[p],
                    budget_ns: self.c.budgets[p],
                });
            }
        }
        self.window = BudgetWindow::new(now.saturating_add(self.c.window_ns));
    }

    // ----- outputs -------------------------------------------------------------------

    /// The oldest undelivered event, if any.
    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The oldest packet dropped inside the scheduler (disconnect or close), handed back
    /// so the embedder can recycle its buffer. Its descriptor is freed now.
    pub fn pop_reclaimed(&mut self) -> Option<Reclaimed<P>> {
        if self.reclaim.head == NIL {
            return None;
        }
        let d = self.pool.pop_front(&mut self.reclaim);
        let (stream, reason) = decode_reclaim_tag(self.pool.get(d).stamp);
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

    /// Counters of priority `priority` (0..=7; higher values are taken modulo 8).
    pub fn priority_stats(&self, priority: u8) -> PriorityStats {
        self.prio_stats[usize::from(priority & 7)]
    }

    /// Counters of tier `tier` under the current policy (an index past the last tier
    /// gives zeros).
    pub fn tier_stats(&self, tier: usize) -> TierStats {
        let mut totals = PriorityStats::default();
        for p in 0..PRIORITIES as u8 {
            if self.wfq.tier_of(p) == tier {
                totals.add(&self.prio_stats[usize::from(p)]);
            }
        }
        TierStats {
            totals,
            served: self.served.get(tier).copied().unwrap_or_default(),
        }
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
        }
    }

    /// The sojourn histogram of `priority` (ns, since the last swap).
    pub fn sojourn_histogram(&self, priority: u8) -> &Histogram<u64> {
        &self.sojourn[usize::from(priority & 7)]
    }

    /// Exchanges the eight sojourn histograms with `spare` (T4): the caller gets the
    /// recorded ones and the scheduler goes on recording into the spares, which the
    /// caller should have reset. No allocation, no copy.
    pub fn swap_sojourn_histograms(&mut self, spare: &mut [Histogram<u64>; PRIORITIES]) {
        std::mem::swap(&mut self.sojourn, spare);
    }

    /// Bytes of scheduler state per stream slot, open or idle (P2 target: <= 64).
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
}

/// `true` when throttle-heap entry `(at, s, generation)` still parks its stream.
fn is_live(streams: &[Stream], caps: &[CapSlot], at: u64, s: u32, generation: u16) -> bool {
    let st = &streams[s as usize];
    st.generation == generation
        && st.has(THROTTLED)
        && st.cap != NIL
        && caps[st.cap as usize].until == at
}

/// Reclaim list entries keep their stream and reason in the descriptor's stamp.
fn reclaim_tag(id: StreamId, reason: DropReason) -> u64 {
    u64::from(id.index()) | (u64::from(id.generation()) << 32) | ((reason.index() as u64) << 48)
}

fn decode_reclaim_tag(tag: u64) -> (StreamId, DropReason) {
    let reason = DropReason::ALL[((tag >> 48) as usize).min(DropReason::COUNT - 1)];
    (StreamId::new(tag as u32, (tag >> 32) as u16), reason)
}
