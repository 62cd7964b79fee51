//! The hot path: enqueue, and the dequeue decision shared by the per-packet and the
//! batch API.
//!
//! A decision picks the class and stream (`wfq`), then looks at that stream's head
//! packet once: a promoted stream whose head is young again leaves the aging lane; a
//! lowest-tier head past the aging bound is dropped as `expired`, and its stream
//! promoted if its next head is past the timeout (S9); CoDel may drop
//! it (S14); a capped stream without tokens is parked (S6); the link bucket may ask the
//! caller to wait (S5). Each of those removes its packet or stream from contention, so
//! its cost is paid once and a decision stays O(1).

use super::codel::{Codel, STALE_AFTER_NS};
use super::prefetch::prefetch;
use super::stream::{Flags, SlotState, StreamId};
use super::types::{BatchEnd, Dequeued, Next, Rejected, Rejection};
use super::wfq::LANE;
use super::{DropReason, Event, Priority, RefuseReason, Scheduler};

/// A stream holding more than this many DRR turns' worth is above its share even before
/// its run of saturated turns shows it: a flood's onset (S14).
const FLOOD_QUANTA: u64 = 8;

/// One decision of [`Scheduler::step`].
enum Step {
    /// The head of stream `s` (class `c`, `len` bytes) may go now.
    Go { c: usize, s: u32, len: u32 },
    /// Nothing may go before this time.
    Wait(u64),
    /// Nothing is queued.
    Idle,
}

impl<P> Scheduler<P> {
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
        self.enqueue_at(now, id, packet, len)
    }

    /// [`Scheduler::enqueue`] at a `now` already advanced: the body shared with
    /// [`Scheduler::enqueue_burst`], inlined into both.
    #[inline(always)]
    fn enqueue_at(
        &mut self,
        now: u64,
        id: StreamId,
        packet: P,
        len: u32,
    ) -> Result<(), Rejected<P>> {
        let s = id.index() as usize;
        let (max_packet, max_depth, warn_at) =
            (self.c.max_packet, self.c.max_depth, self.c.warn_at);
        // One look at the slot decides the common case; every other case (bad length,
        // stale handle, closed or disconnected stream, full queue) takes the cold path.
        let Some(st) = self.streams.get_mut(s) else {
            return self.enqueue_cold(id, packet, len);
        };
        if len == 0
            || len > max_packet
            || st.generation() != id.generation()
            || st.state() != SlotState::Open
            || st.len >= max_depth
        {
            return self.enqueue_cold(id, packet, len);
        }
        let d = match self.pool.alloc(packet, len, now) {
            Ok(d) => d,
            Err(packet) => return self.refuse(packet, RefuseReason::PoolExhausted),
        };
        self.pool.push_back(&mut st.fifo, d);
        st.len += 1;
        st.enqueued += 1;
        let prio = usize::from(st.prio());
        let ps = &mut self.prio_stats[prio];
        ps.enqueued += 1;
        ps.queued += 1;
        self.offered_bytes[prio] += u64::from(len);
        if st.len >= warn_at && !st.has(Flags::WARNED) {
            self.warn(s);
        }
        if !self.streams[s].has(Flags::THROTTLED) {
            self.wfq.packet_added(&mut self.streams, s as u32);
        }
        Ok(())
    }

    /// Raises WARNING for stream `s`, whose queue just reached the watermark, or is full
    /// outside an episode after a policy lowered its depth (S7; `depth` may then be
    /// above the new `max_queue_depth`).
    #[cold]
    #[inline(never)]
    fn warn(&mut self, s: usize) {
        let st = &mut self.streams[s];
        st.set(Flags::WARNED);
        self.prio_stats[usize::from(st.prio())].warnings += 1;
        let stream = StreamId::new(s as u32, st.generation());
        let depth = st.len;
        self.events
            .push(Event::BackpressureWarning { stream, depth });
    }

    /// The uncommon outcomes of `enqueue`: a refusal (with its reason) or a full queue.
    #[cold]
    #[inline(never)]
    fn enqueue_cold(&mut self, id: StreamId, packet: P, len: u32) -> Result<(), Rejected<P>> {
        if len == 0 || len > self.c.max_packet {
            return self.refuse(packet, RefuseReason::InvalidLength);
        }
        match self.lookup(id) {
            Ok(s) if self.streams[s].state() == SlotState::Open => self.overflow(s, packet, len),
            Ok(_) => self.refuse(packet, RefuseReason::Disconnected),
            Err(super::StreamError::Closed(_)) => self.refuse(packet, RefuseReason::Closed),
            Err(_) => self.refuse(packet, RefuseReason::UnknownStream),
        }
    }

    /// Enqueues a burst: every `(stream, packet, len)` of `burst` (drained, in order) at
    /// time `now`, exactly as that many [`Scheduler::enqueue`] calls would, handing
    /// refused and dropped packets back in `rejected` (appended, in order). It first
    /// prefetches the stream slots of the whole burst, then the descriptors they will
    /// link to, so the cache misses of random streams overlap. Reserve both vectors once
    /// and reuse them: this allocates nothing.
    pub fn enqueue_burst(
        &mut self,
        now: u64,
        burst: &mut Vec<(StreamId, P, u32)>,
        rejected: &mut Vec<Rejected<P>>,
    ) {
        for (id, _, _) in burst.iter() {
            prefetch(self.streams.as_ptr().wrapping_add(id.index() as usize));
        }
        for (id, _, _) in burst.iter() {
            if let Some(st) = self.streams.get(id.index() as usize) {
                self.pool.prefetch(st.fifo.tail);
            }
        }
        let now = self.advance(now);
        for (id, packet, len) in burst.drain(..) {
            if let Err(r) = self.enqueue_at(now, id, packet, len) {
                rejected.push(r);
            }
        }
    }

    fn refuse(&mut self, packet: P, reason: RefuseReason) -> Result<(), Rejected<P>> {
        self.refused[reason.index()] += 1;
        Err(Rejected {
            packet,
            reason: Rejection::Refused(reason),
        })
    }

    /// A push onto a full queue: tail drop plus CRITICAL (S7), or, once the stream has
    /// ignored `critical_strikes` CRITICALs in this episode and the policy disconnects,
    /// disconnection (S8).
    fn overflow(&mut self, s: usize, packet: P, len: u32) -> Result<(), Rejected<P>> {
        if !self.streams[s].has(Flags::WARNED) {
            // A full queue is past the watermark: an episode the push did not open
            // (a policy lowered the depth under the queue) gets its WARNING first.
            self.warn(s);
        }
        let st = &mut self.streams[s];
        st.enqueued += 1;
        let id = StreamId::new(s as u32, st.generation());
        let prio = usize::from(st.prio());
        self.prio_stats[prio].enqueued += 1;
        self.offered_bytes[prio] += u64::from(len);
        if self.c.disconnect && st.strikes() >= self.c.strikes {
            let dropped = self.drop_queue(s, DropReason::Disconnected) + 1;
            let st = &mut self.streams[s];
            st.deficit += 1;
            st.set_state(SlotState::Disconnected);
            let ps = &mut self.prio_stats[prio];
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
        st.strike();
        let (depth, strike) = (st.len, st.strikes());
        let ps = &mut self.prio_stats[prio];
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

    /// The next packet to send at `now`, or when to ask again. Makes the same decisions
    /// as [`Scheduler::dequeue_batch`] (it is a batch of one). O(1) per packet.
    #[inline]
    pub fn dequeue(&mut self, now: u64) -> Next<P> {
        let now = self.advance(now);
        self.begin_batch(now);
        match self.step(now) {
            Step::Go { c, s, len } => Next::Packet(self.commit(now, c, s, len)),
            Step::Wait(until_ns) => Next::Wait { until_ns },
            Step::Idle => Next::Idle,
        }
    }

    /// Takes up to `max` packets eligible at `now` into `out` (appended in send order;
    /// reserve its capacity once and reuse it, so this never allocates). Returns why it
    /// stopped. The same decisions as `max` calls of [`Scheduler::dequeue`] at `now`:
    /// the batch only shares the per-call work (clock, window, timers).
    #[inline]
    pub fn dequeue_batch(&mut self, now: u64, max: usize, out: &mut Vec<Dequeued<P>>) -> BatchEnd {
        let now = self.advance(now);
        self.begin_batch(now);
        for _ in 0..max {
            match self.step(now) {
                Step::Go { c, s, len } => out.push(self.commit(now, c, s, len)),
                Step::Wait(until_ns) => return BatchEnd::Wait { until_ns },
                Step::Idle => return BatchEnd::Idle,
            }
        }
        BatchEnd::Full
    }

    /// Work done once per call: the budget window, the cap timers and the aging check.
    #[inline(always)]
    fn begin_batch(&mut self, now: u64) {
        if now - self.last_call >= STALE_AFTER_NS {
            self.forget_codel_episodes();
        }
        self.last_call = now;
        if now >= self.window.end {
            self.roll_window(now);
        }
        self.release_parked(now);
        // At most one aging check per call: a check moves the next one past `now`.
        self.aging_tick(now);
    }

    /// One decision at `now` (see the module docs).
    #[inline]
    fn step(&mut self, now: u64) -> Step {
        loop {
            let Some((c, s)) = self.wfq.pick(&mut self.streams) else {
                return match self.next_release(now) {
                    Some(at) => Step::Wait(at),
                    None => Step::Idle,
                };
            };
            let st = &self.streams[s as usize];
            self.prefetch_after(st.next);
            let head = self.pool.get(st.fifo.head);
            let (len, age) = (head.len, now.saturating_sub(head.stamp));
            let prio = st.prio();
            if c == LANE && age < self.c.aging_ns {
                self.demote(s);
                continue;
            }
            if age > self.c.expire_ns && self.wfq.is_low(prio) {
                self.expire_head(c, s, now);
                continue;
            }
            match &self.c.codel[usize::from(prio)] {
                Some(p) if self.aqm_applies(c, st, len) => {
                    if !st.over_share() {
                        // A flood's onset: above its share until its queue empties.
                        self.streams[s as usize].mark_over_share();
                    }
                    let st = &mut self.streams[s as usize];
                    let after = st.len - 1;
                    let drop = update_codel(st, |codel| {
                        // Hard limit: a packet older than the interval is dropped whatever
                        // the control law says, and speeds the control law up.
                        let hard = age > p.interval_ns && after > 0;
                        if hard {
                            codel.escalate();
                        }
                        hard || codel.should_drop(now, age, after, p)
                    });
                    if drop {
                        self.drop_head(c, s, DropReason::Aqm);
                        continue;
                    }
                }
                // AQM does not act on this head, and an episode is under way: AQM off
                // for this priority (a policy change) forgets it, count included; see
                // `unwatched_head` for the other case.
                None if st.codel_time != 0 => reset_codel(&mut self.streams[s as usize]),
                Some(_) if st.codel_time != 0 => self.unwatched_head(c, s, len),
                _ => {}
            }
            let st = &self.streams[s as usize];
            if st.cap != super::stream::NIL16
                && let Some(wait) = self.caps.slots[usize::from(st.cap)]
                    .bucket
                    .wait_for(now, len)
            {
                self.park(s, now.saturating_add(wait));
                continue;
            }
            if let Some(link) = &mut self.link {
                if let Some(wait) = link.wait_for(now, len) {
                    return Step::Wait(now.saturating_add(wait));
                }
                link.consume(len);
            }
            return Step::Go { c, s, len };
        }
    }

    /// Stream `s` (class `c`, head packet of `len` bytes), of a priority with AQM, has
    /// a CoDel episode under way but AQM does not act on its head: no time may survive
    /// a backlog that AQM does not watch (stored times wrap after ~36 min). With at most
    /// one turn's worth queued, the head is below target for CoDel (the RFC's "under
    /// one MTU queued": the time is cleared, the count kept); the queue is estimated as
    /// packets x head length with the length taken as at least half the policy's
    /// quantum, so a small head does not end the episode of a mixed-size queue. A
    /// stream within its share with a few turns queued keeps its episode as it is.
    #[cold]
    #[inline(never)]
    fn unwatched_head(&mut self, c: usize, s: u32, len: u32) {
        let st = &mut self.streams[s as usize];
        let each = len.max(self.policy.spec().quantum_bytes / 2);
        let at_most = u64::from(st.len) * u64::from(each);
        if at_most <= u64::from(self.wfq.quantum_of(c, st.weight).unsigned_abs()) {
            update_codel(st, Codel::below_target);
        }
    }

    /// After a gap of `STALE_AFTER_NS` without a dequeue call, every stream's CoDel
    /// state is forgotten: its times could be misread (O(streams), once per such gap).
    #[cold]
    #[inline(never)]
    fn forget_codel_episodes(&mut self) {
        for st in &mut self.streams {
            reset_codel(st);
        }
    }

    /// Whether AQM may act on stream `st` (class `c`, head packet of `len` bytes): only
    /// on a stream above its share (see `Stream::over_share`, or more than
    /// `FLOOD_QUANTA` turns queued: a flood's onset) that holds more than one DRR turn's
    /// worth (queue estimated as packets x head length). What one turn clears is not a
    /// standing queue: RFC 8289 leaves a queue under one MTU alone, and a DRR turn is
    /// our MTU.
    #[inline(always)]
    fn aqm_applies(&self, c: usize, st: &super::stream::Stream, len: u32) -> bool {
        let backlog = u64::from(st.len) * u64::from(len);
        let quantum = u64::from(self.wfq.quantum_of(c, st.weight).unsigned_abs());
        backlog > quantum && (st.over_share() || backlog > FLOOD_QUANTA * quantum)
    }

    /// Prefetch pipeline of the decisions: `next` follows the stream being served in
    /// its list and is likely the next decision's. Its slot was prefetched by the
    /// previous decision, so reading it now is cheap: prefetch its head descriptor and
    /// the slot after it (two decisions ahead).
    #[inline(always)]
    fn prefetch_after(&self, next: u32) {
        if let Some(n) = self.streams.get(next as usize) {
            self.pool.prefetch(n.fifo.head);
            prefetch(self.streams.as_ptr().wrapping_add(n.next as usize));
        }
    }

    /// Takes the head packet of stream `s` (class `c`) for sending.
    #[inline]
    fn commit(&mut self, now: u64, c: usize, s: u32, len: u32) -> Dequeued<P> {
        let st = &mut self.streams[s as usize];
        if st.cap != super::stream::NIL16 {
            self.caps.slots[usize::from(st.cap)].bucket.consume(len);
        }
        let (packet, stamp) = self.pool.take_front(&mut st.fifo);
        st.len -= 1;
        st.dequeued += 1;
        let (id, prio) = (StreamId::new(s, st.generation()), st.prio());
        self.wfq.served(&mut self.streams, c, s, len);
        self.after_take(s);
        let p = usize::from(prio);
        let ps = &mut self.prio_stats[p];
        ps.dequeued += 1;
        ps.dequeued_bytes += u64::from(len);
        ps.queued -= 1;
        // A tier's own service is derived from its priorities' counters (ServiceBook).
        debug_assert!(
            c == LANE || c == self.wfq.tier_of(prio),
            "served by its tier"
        );
        if c == LANE {
            self.service.lane_served(p, len);
        }
        let sojourn_ns = now.saturating_sub(stamp);
        if self.record_sojourn {
            self.sojourn.record(p, sojourn_ns);
        }
        if sojourn_ns > self.c.budgets[p] {
            ps.budget_violations += 1;
        }
        Dequeued {
            packet,
            stream: id,
            len,
            priority: Priority::saturating(prio),
            sojourn_ns,
        }
    }

    /// Drops the head packet of listed stream `s` (class `c`) inside the scheduler: it
    /// goes to the reclaim list, counted under `reason` (S11).
    fn drop_head(&mut self, c: usize, s: u32, reason: DropReason) {
        let st = &mut self.streams[s as usize];
        let d = self.pool.pop_front(&mut st.fifo);
        st.len -= 1;
        match reason {
            DropReason::Expired => st.expired = st.expired.saturating_add(1),
            _ => st.aqm_dropped = st.aqm_dropped.saturating_add(1),
        }
        let (tag, prio) = (StreamId::new(s, st.generation()).to_raw(), st.prio());
        self.pool.retag(d, tag, reason.index() as u32);
        self.pool.push_back(&mut self.reclaim, d);
        self.reclaim_len += 1;
        let ps = &mut self.prio_stats[usize::from(prio)];
        ps.queued -= 1;
        ps.dropped[reason.index()] += 1;
        self.wfq.dropped(&mut self.streams, c, s);
        self.after_take(s);
    }

    /// Drops the head of lowest-tier stream `s` (class `c`), older than the aging bound
    /// (S9), and checks the stream as the aging cursor would: its check may come after
    /// the grace, and an expiry is proof enough that the stream may need the lane.
    #[cold]
    #[inline(never)]
    fn expire_head(&mut self, c: usize, s: u32, now: u64) {
        self.drop_head(c, s, DropReason::Expired);
        debug_assert!(
            self.streams[s as usize].len == 0 || self.streams[s as usize].has(Flags::LISTED),
            "a stream with packets left stays listed after a drop"
        );
        self.promote_if_aged(s, now);
    }

    /// After a packet left stream `s` (sent or dropped): ends the backpressure episode
    /// at the clear watermark (S7), and on an empty queue resets CoDel and ends a
    /// promotion.
    #[inline(always)]
    fn after_take(&mut self, s: u32) {
        let st = &mut self.streams[s as usize];
        if st.in_episode() {
            self.end_episode(s);
        }
        let st = &mut self.streams[s as usize];
        if st.len == 0 {
            st.end_saturation();
            reset_codel(st);
            if st.has(Flags::PROMOTED) {
                self.demote(s);
            }
        }
    }

    /// Ends stream `s`'s backpressure episode once its queue is at the clear watermark
    /// (S7). Out of line: episodes are rare.
    #[cold]
    #[inline(never)]
    fn end_episode(&mut self, s: u32) {
        let st = &mut self.streams[s as usize];
        let left = st.len;
        if left <= self.c.clear_at {
            st.clear(Flags::WARNED);
            st.forgive();
            let stream = StreamId::new(s, st.generation());
            self.events.push(Event::BackpressureCleared {
                stream,
                depth: left,
            });
        }
    }

    /// Closes the budget window: a priority whose p95 sojourn exceeded its budget emits
    /// [`Event::BudgetViolation`] (S10).
    fn roll_window(&mut self, now: u64) {
        for p in Priority::ALL {
            let i = p.index();
            let stats = &self.prio_stats[i];
            if self.c.budgets[i] != u64::MAX && self.window.p95_over(i, stats) {
                self.events.push(Event::BudgetViolation {
                    priority: p,
                    samples: self.window.samples(i, stats),
                    over_budget: self.window.over(i, stats),
                    budget_ns: self.c.budgets[i],
                });
            }
        }
        self.window =
            super::BudgetWindow::new(now.saturating_add(self.c.window_ns), &self.prio_stats);
    }
}

/// Runs `f` on stream `st`'s CoDel state (kept in two slot fields) and stores it back.
#[inline(always)]
fn update_codel<R>(st: &mut super::stream::Stream, f: impl FnOnce(&mut Codel) -> R) -> R {
    let mut codel = Codel::from_parts(st.codel_time, st.codel_count);
    let r = f(&mut codel);
    (st.codel_time, st.codel_count) = codel.parts();
    r
}

/// Forgets a stream's CoDel state (its queue emptied or was dropped, AQM went off for
/// it, or it went unexamined for `STALE_AFTER_NS`).
#[inline]
pub(super) fn reset_codel(st: &mut super::stream::Stream) {
    update_codel(st, Codel::reset);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        Next, Policy, PolicySpec, RateCap, Scheduler, SchedulerConfig, StreamConfig, StreamId,
    };
    use super::Codel;

    const MS: u64 = 1_000_000;

    /// A scheduler on `policy` with one stream opened by `config`, holding
    /// one packet per `(age, len)` of `queue` (numbered in order) at `now`, before any
    /// dequeue call. With `stale`, the stream's CoDel state is a dropping state whose
    /// `drop_next` reads as 10 minutes before `now` (a time left ~83 minutes
    /// unexamined).
    fn planted(
        now: u64,
        stale: bool,
        policy: Policy,
        config: StreamConfig,
        queue: &[(u64, u32)],
    ) -> (Scheduler<u32>, StreamId) {
        let config_s = SchedulerConfig {
            max_streams: 4,
            max_packets: 64,
            event_capacity: 64,
        };
        let mut s: Scheduler<u32> = Scheduler::new(config_s, Arc::new(policy)).unwrap();
        let id = s.open(config).unwrap();
        for (k, &(age, len)) in queue.iter().enumerate() {
            s.enqueue(now - age, id, k as u32, len).unwrap();
        }
        if stale {
            // `drop_next` 10 minutes before `now` (wrapping: stored times are modulo
            // 2^42 ns anyway).
            let codel = Codel::dropping_from(now.wrapping_sub(600_000 * MS));
            let st = &mut s.streams[id.index() as usize];
            (st.codel_time, st.codel_count) = codel.parts();
        }
        (s, id)
    }

    /// A P7 stream holding 20 packets 5 ms old (above the 2 ms target, under the 10 ms
    /// interval, so neither CoDel nor the hard limit would act on a fresh state) and 20
    /// packets 1 ms old, 1,500 bytes each (a flood's worth of P7 turns).
    fn setup(now: u64, stale: bool) -> (Scheduler<u32>, StreamId) {
        let mut queue = vec![(5 * MS, 1_500); 20];
        queue.extend([(MS, 1_500); 20]);
        let config = StreamConfig::with_priority(7);
        planted(now, stale, Policy::default(), config, &queue)
    }

    /// Whether stream `id` is in CoDel's dropping state, and its stored time.
    fn codel_of(s: &Scheduler<u32>, id: StreamId) -> (bool, u32) {
        let st = &s.streams[id.index() as usize];
        let codel = Codel::from_parts(st.codel_time, st.codel_count);
        (codel.dropping(), st.codel_time)
    }

    /// One decision at `now`: the stream's AQM drops so far, the packet sent, and
    /// whether the stream is left in CoDel's dropping state.
    fn decide(s: &mut Scheduler<u32>, id: StreamId, now: u64) -> (u64, u32, bool) {
        let Next::Packet(d) = s.dequeue(now) else {
            panic!("a packet is due");
        };
        let dropping = codel_of(s, id).0;
        (s.stream_stats(id).unwrap().dropped_aqm, d.packet, dropping)
    }

    fn first_decision(now: u64, stale: bool) -> (u64, u32, bool) {
        let (mut s, id) = setup(now, stale);
        decide(&mut s, id, now)
    }

    /// S14, the worst case DECISIONS.md states for a stale CoDel state that no context
    /// reset caught: it drops, within one decision, every head older than the target
    /// and stops at the first younger head, which it sends; a fresh state drops nothing.
    #[test]
    fn s14_a_stale_dropping_state_read_as_past_drops_at_most_the_part_of_the_queue_above_target() {
        let now = 1_000 * MS;
        let (dropped, sent, dropping) = first_decision(now, true);
        assert_eq!(dropped, 20, "every head older than the target, and no more");
        assert_eq!(sent, 20, "the first head under the target is sent");
        assert!(!dropping, "the dropping state ended");
        assert_eq!(first_decision(now, false), (0, 0, false), "a fresh state");
    }

    /// S14, one of the context resets: a shard that made no dequeue call for
    /// `STALE_AFTER_NS` (~18.3 min) forgets every stream's CoDel state first, so the
    /// same stale state drops nothing.
    #[test]
    fn s14_a_stale_dropping_state_is_forgotten_after_18_minutes_without_a_dequeue_call() {
        let now = super::STALE_AFTER_NS + 10 * MS;
        assert_eq!(first_decision(now, true), (0, 0, false));
    }

    /// S14, another context reset: a decision while the policy has AQM off forgets the
    /// stream's episode, so when AQM comes back the stale state drops nothing (without
    /// the reset the stream is still in the dropping state after that decision).
    #[test]
    fn s14_a_stale_dropping_state_is_forgotten_by_a_decision_with_aqm_off() {
        let now = 1_000 * MS;
        let (mut s, id) = setup(now, true);
        let off = PolicySpec {
            aqm: false,
            ..PolicySpec::default()
        };
        s.set_policy(now, Arc::new(off.build().unwrap()));
        assert_eq!(decide(&mut s, id, now), (0, 0, false));
        s.set_policy(now, Arc::new(Policy::default()));
        assert_eq!(decide(&mut s, id, now), (0, 1, false));
    }

    /// The CoDel state of a P7 stream left in the wheel by its cap of `rate_bps`, after
    /// a first decision (the bucket's one-packet burst) and a second that parks it. It
    /// starts in a stale dropping state and holds four 1,500-byte packets 5 ms old: about
    /// two of P7's 3,028-byte turns, within its share and under the flood mark of 8
    /// turns, so AQM does not watch its head and the first decision keeps the episode
    /// as it is.
    fn parked_codel(rate_bps: u64) -> (bool, u32) {
        let now = 1_000 * MS;
        let cap = RateCap {
            rate_bps,
            burst_bytes: Some(1_500),
        };
        let config = StreamConfig {
            cap: Some(cap),
            ..StreamConfig::with_priority(7)
        };
        // Packets of at most 1,500 bytes, so the bucket may hold just one.
        let policy = PolicySpec {
            max_packet_bytes: 1_500,
            ..PolicySpec::default()
        };
        let policy = policy.build().unwrap();
        let (mut s, id) = planted(now, true, policy, config, &[(5 * MS, 1_500); 4]);
        assert_eq!(decide(&mut s, id, now), (0, 0, true), "the bucket's burst");
        // The wait it reports is the wheel's next step, not the stream's wake time.
        assert!(
            matches!(s.dequeue(now), Next::Wait { .. }),
            "the cap holds it"
        );
        assert_eq!(s.stream_stats(id).unwrap().dropped_aqm, 0);
        codel_of(&s, id)
    }

    /// S14, the park reset: a stream parked by its cap for `STALE_AFTER_NS` (2^40 ns,
    /// ~18.3 min) or longer forgets its CoDel state when parked; a shorter park keeps
    /// it. A 1,500-byte head waits 20 min at 10 bit/s and 18.2 min at 11 bit/s.
    #[test]
    fn s14_a_stream_parked_by_its_cap_past_the_stale_bound_forgets_its_codel_state() {
        assert_eq!(parked_codel(10), (false, 0), "forgotten when parked");
        let (dropping, time) = parked_codel(11);
        assert!(dropping && time != 0, "kept: {time}");
    }

    /// S14, the unwatched-head reset: a stream with at most one DRR turn queued (two
    /// 600-byte packets, estimated at 2 x 757 bytes against P7's 3,028-byte quantum) is
    /// below target for CoDel, so a decision on it clears the stored time of a stale
    /// dropping state. A flood that follows then starts a fresh interval timer and
    /// loses nothing in its first decisions; with the stale state kept, its first
    /// decision drops 39 of the 41 packets queued.
    #[test]
    fn s14_a_stale_dropping_state_under_one_turn_is_cleared_before_a_flood_can_meet_it() {
        let now = 1_000 * MS;
        let config = StreamConfig::with_priority(7);
        let queue = [(5 * MS, 600), (5 * MS, 600)];
        let (mut s, id) = planted(now, true, Policy::default(), config, &queue);
        assert_eq!(decide(&mut s, id, now), (0, 0, false));
        assert_eq!(codel_of(&s, id), (false, 0), "the stored time is cleared");
        // A flood arrives; 5 ms later its heads are above the 2 ms target.
        for k in 2..42 {
            s.enqueue(now, id, k, 1_500).unwrap();
        }
        let later = now + 5 * MS;
        assert_eq!(decide(&mut s, id, later), (0, 1, false), "no drop yet");
        assert_eq!(decide(&mut s, id, later), (0, 2, false), "no drop yet");
        let (dropping, time) = codel_of(&s, id);
        assert!(!dropping && time != 0, "a fresh interval timer runs");
    }
}
