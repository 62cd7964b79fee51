//! Per-stream rate caps (S6): a side table of token buckets and a timing wheel that
//! parks capped streams waiting for tokens.
//!
//! A parked stream leaves its service list, so it never blocks others, and is linked
//! (through the same `prev`/`next` it uses in a service list) into the wheel slot of
//! the tick its tokens suffice (a stream of the lowest tier: or its head packet reaches
//! the aging bound, if sooner). The wheel has 1024 slots of 65.5 us each; a
//! wait beyond one revolution lands in the slot of its tick modulo the wheel and is
//! kept there until the revolution that reaches it. Parking, unparking and releasing
//! are O(1); advancing the clock costs one slot visit per elapsed tick, at most one
//! revolution per call however far time jumps.

use super::Scheduler;
use super::policy::MAX_BURST_BYTES;
use super::pool::NIL;
use super::shaper::TokenBucket;
use super::stream::{Flags, List, NIL16, RateCap, Stream};
use super::types::StreamError;

/// Wheel slots (a power of two).
const SLOTS: usize = 1024;
/// log2 of the wheel tick in ns (65.5 us): caps are released at most one tick late,
/// which their bucket absorbs (tokens keep accruing while parked).
const TICK_SHIFT: u32 = 16;
/// Most capped streams one shard can hold (cap indices are 16 bits, `NIL16` excluded).
pub(crate) const MAX_CAPPED: usize = NIL16 as usize;

/// A rate-capped stream's bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CapSlot {
    pub(crate) spec: RateCap,
    pub(crate) bucket: TokenBucket,
    /// When the stream's current parking ends (ns), while it is parked.
    pub(crate) until: u64,
    next_free: u16,
}

/// The cap table and the timing wheel.
#[derive(Debug)]
pub(crate) struct Caps {
    pub(crate) slots: Vec<CapSlot>,
    free: u16,
    wheel: Box<[List; SLOTS]>,
    /// The tick up to which the wheel has been advanced.
    tick: u64,
    /// Streams parked now.
    parked: u32,
}

impl Caps {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NIL16,
            wheel: Box::new([List::EMPTY; SLOTS]),
            tick: 0,
            parked: 0,
        }
    }

    fn slot_of(until: u64) -> usize {
        ((until >> TICK_SHIFT) as usize) & (SLOTS - 1)
    }

    /// Takes a table entry for `spec`; allocates only to grow the table (at `open`).
    pub(crate) fn alloc(&mut self, spec: RateCap, bucket: TokenBucket) -> Result<u16, StreamError> {
        let slot = CapSlot {
            spec,
            bucket,
            until: 0,
            next_free: NIL16,
        };
        if self.free != NIL16 {
            let i = self.free;
            self.free = self.slots[usize::from(i)].next_free;
            self.slots[usize::from(i)] = slot;
            return Ok(i);
        }
        if self.slots.len() >= MAX_CAPPED {
            return Err(StreamError::Cap {
                field: "cap",
                value: self.slots.len() as u64,
                expected: "at most 65535 capped streams per shard",
            });
        }
        self.slots.push(slot);
        Ok((self.slots.len() - 1) as u16)
    }

    pub(crate) fn free(&mut self, i: u16) {
        if i != NIL16 {
            self.slots[usize::from(i)].next_free = self.free;
            self.free = i;
        }
    }
}

impl<P> Scheduler<P> {
    /// Builds a cap's bucket (full); the cap was checked with its config
    /// ([`StreamConfig::check`](super::StreamConfig::check)).
    pub(super) fn cap_bucket(&self, spec: RateCap) -> Result<(RateCap, TokenBucket), StreamError> {
        Ok((
            spec,
            TokenBucket::new(spec.rate_bps, self.cap_burst(spec), self.now),
        ))
    }

    /// Bucket depth of a cap under the policy in force: its own `burst_bytes`, or
    /// `burst_multiplier` x 10 ms at the cap rate, never less than one maximal packet.
    pub(super) fn cap_burst(&self, spec: RateCap) -> u64 {
        let min = u64::from(self.c.max_packet);
        spec.burst_bytes.map_or_else(
            || {
                ((spec.rate_bps as f64 / 800.0 * self.c.cap_multiplier) as u64)
                    .clamp(min, MAX_BURST_BYTES)
            },
            |b| b.max(min),
        )
    }

    /// After a policy change of `max_packet_bytes` or `cap_burst_multiplier`: every
    /// cap's bucket takes the depth the new policy gives it, keeping the tokens held
    /// (clamped), so a bucket still holds one largest packet and follows the
    /// multiplier (S6). O(cap table): free entries are resized too, harmlessly (`alloc`
    /// overwrites an entry whole). Parked streams are re-timed by `rewake_parked`.
    pub(super) fn resize_caps(&mut self) {
        let now = self.now;
        for i in 0..self.caps.slots.len() {
            let spec = self.caps.slots[i].spec;
            let burst = self.cap_burst(spec);
            self.caps.slots[i]
                .bucket
                .reconfigure(spec.rate_bps, burst, now);
        }
    }

    /// Parks listed stream `s` until its tokens suffice at `at` (S6): it leaves
    /// contention, others go on.
    pub(super) fn park(&mut self, s: u32, at: u64) {
        self.wfq.unlink(&mut self.streams, s);
        let at = self.wake_by(s, at);
        if at.saturating_sub(self.now) >= super::codel::STALE_AFTER_NS {
            // Parked longer than CoDel's times can be compared (a cap of a few bit/s).
            super::hot::reset_codel(&mut self.streams[s as usize]);
        }
        self.put_on_wheel(s, at);
    }

    /// When stream `s` (with packets), whose tokens suffice at `at`, must wake: a stream
    /// of the lowest tier by the time its head packet passes the aging bound (S9), so a
    /// packet its cap holds is dropped at the bound, not when tokens come.
    fn wake_by(&self, s: u32, at: u64) -> u64 {
        let st = &self.streams[s as usize];
        if !self.wfq.is_low(st.prio()) {
            return at;
        }
        let stamp = self.pool.get(st.fifo.head).stamp;
        at.min(stamp.saturating_add(self.c.expire_ns).saturating_add(1))
    }

    /// Links unlisted stream `s` into the wheel slot of `at`.
    fn put_on_wheel(&mut self, s: u32, at: u64) {
        let at = at.max(self.caps.tick << TICK_SHIFT);
        let st = &mut self.streams[s as usize];
        st.set(Flags::THROTTLED);
        self.caps.slots[usize::from(st.cap)].until = at;
        self.caps.wheel[Caps::slot_of(at)].push_back(&mut self.streams, s);
        self.caps.parked += 1;
    }

    /// After a policy change: a parked stream now of the lowest tier, or under a shorter
    /// aging bound, must wake by its head's new bound (S9), and one whose bucket was
    /// resized by the time its tokens now suffice (a later time is left as it is: the
    /// stream wakes, finds too few tokens and parks again). O(wheel slots + parked).
    pub(super) fn rewake_parked(&mut self) {
        if self.caps.parked == 0 {
            return;
        }
        let now = self.now;
        for slot in 0..SLOTS {
            let mut s = self.caps.wheel[slot].head;
            while s != NIL {
                let st = &self.streams[s as usize];
                let next = st.next;
                let head = (st.len > 0).then(|| self.pool.get(st.fifo.head).len);
                let cap = &mut self.caps.slots[usize::from(st.cap)];
                let until = cap.until;
                let ready = head.map_or(until, |len| {
                    now.saturating_add(cap.bucket.wait_for(now, len).unwrap_or(0))
                });
                // Never before the wheel's tick, as `put_on_wheel` stores it: a time in
                // the past compared unclamped was "earlier" at every visit, and two such
                // streams swapped places at a slot's tail for good (set_policy hung).
                let at = self
                    .wake_by(s, until.min(ready))
                    .max(self.caps.tick << TICK_SHIFT);
                if at < until {
                    // Moved to an earlier time: a later slot of this walk may meet it
                    // again, and leaves it where it is.
                    self.unpark(s);
                    self.put_on_wheel(s, at);
                }
                s = next;
            }
        }
    }

    /// Takes parked stream `s` off the wheel (it stays unlisted).
    pub(super) fn unpark(&mut self, s: u32) {
        let st = &mut self.streams[s as usize];
        debug_assert!(st.has(Flags::THROTTLED), "unpark of a stream not parked");
        st.clear(Flags::THROTTLED);
        let until = self.caps.slots[usize::from(st.cap)].until;
        self.caps.wheel[Caps::slot_of(until)].unlink(&mut self.streams, s);
        self.caps.parked -= 1;
    }

    /// Returns to contention every parked stream whose time has come.
    #[inline]
    pub(super) fn release_parked(&mut self, now: u64) {
        if self.caps.parked == 0 {
            self.caps.tick = now >> TICK_SHIFT;
            return;
        }
        let target = now >> TICK_SHIFT;
        // The current tick is visited again on later calls (its streams may be due
        // later in the tick); a jump visits at most one revolution.
        let first = self.caps.tick.max(target.saturating_sub(SLOTS as u64 - 1));
        for tick in first..=target {
            self.release_slot(Caps::slot_of(tick << TICK_SHIFT), now);
        }
        self.caps.tick = target;
    }

    fn release_slot(&mut self, slot: usize, now: u64) {
        let mut s = self.caps.wheel[slot].head;
        while s != NIL {
            let st = &self.streams[s as usize];
            let next = st.next;
            if self.caps.slots[usize::from(st.cap)].until <= now {
                self.unpark(s);
                if self.streams[s as usize].len > 0 {
                    self.wfq.link(&mut self.streams, s);
                }
            }
            s = next;
        }
    }

    /// Earliest time a parked stream may be released, or `None` if none is parked. May
    /// be earlier than the true time (a wait beyond one revolution), never later.
    pub(super) fn next_release(&self, now: u64) -> Option<u64> {
        if self.caps.parked == 0 {
            return None;
        }
        let start = self.caps.tick;
        for tick in start..start + SLOTS as u64 {
            let mut s = self.caps.wheel[Caps::slot_of(tick << TICK_SHIFT)].head;
            let mut best = u64::MAX;
            while s != NIL {
                let st: &Stream = &self.streams[s as usize];
                best = best.min(self.caps.slots[usize::from(st.cap)].until);
                s = st.next;
            }
            if best != u64::MAX {
                // An entry of a later revolution: wake at the end of this tick instead.
                let tick_end = (tick + 1) << TICK_SHIFT;
                return Some(best.min(tick_end).max(now.saturating_add(1)));
            }
        }
        None
    }
}
