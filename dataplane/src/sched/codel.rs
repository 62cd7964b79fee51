//! Per-stream CoDel active queue management (RFC 8289), decided one head packet at a time.
//!
//! Each stream keeps a 6-byte [`Codel`] in its slot; each priority has a [`CodelParams`]
//! (target and interval). When a stream's head packet is about to be sent, the scheduler asks
//! [`Codel::should_drop`]; on `true` it drops that packet (reason `aqm`) and asks again for the
//! next head, so several drops at one `now` happen naturally while the control law is behind.
//! When the stream's queue goes empty it calls [`Codel::reset`].
//!
//! # How this maps onto RFC 8289 section 5
//!
//! - `dodequeue`'s "OK to drop" test is `sojourn >= target` and `backlog_after > 0`: the RFC's
//!   "at least one MTU still queued" becomes "at least one more packet still queued", because
//!   the scheduler counts packets per stream, not bytes.
//! - The RFC's dequeue loop (`while now >= drop_next`) is unrolled by the caller: one call per
//!   head packet, one drop at most per call.
//! - Re-entry uses the original CoDel rule (`count - 2` if the previous episode's `count > 2`,
//!   else 1) instead of RFC 8289's `count - lastcount` with a `16 * interval` recency check,
//!   because the slot has no room for `lastcount`. `count` survives an exit from the dropping
//!   state only while the stream stays backlogged; [`Codel::reset`] (queue empty) clears it.
//! - Times are stored as `ns >> 10` truncated to `u32` (see [`Codel`]); `sojourn` is compared
//!   with `target` in full nanoseconds.
//! - The control law runs in integers: `interval / sqrt(count)` as
//!   `(interval << 23) / isqrt(count << 46)`, rounded to the nearest 1.024-us unit and at least
//!   one unit, so `drop_next` always moves forward.
//! - `interval` is clamped to [`MAX_INTERVAL_NS`] (2^40 ns, about 18 min) so the fixed-point
//!   arithmetic cannot overflow and every stored time stays within the wrapping-compare window.
//!
//! No floats, no allocation, no `unsafe`: the struct is `repr(packed(2))` and its fields are
//! only ever copied, never borrowed.

/// Bit of [`Codel::count`] set while in the dropping state.
const DROPPING: u16 = 0x8000;

/// Largest `count` (the low 15 bits of [`Codel::count`]); `count` saturates here.
const COUNT_MAX: u16 = 0x7fff;

/// Stored times are `ns >> UNIT_SHIFT`: one unit is 1024 ns (1.024 us).
const UNIT_SHIFT: u32 = 10;

/// Half a time unit, in ns: added before shifting so durations round to the nearest unit.
const HALF_UNIT_NS: u64 = 1 << (UNIT_SHIFT - 1);

/// Largest interval honoured, in ns (2^40 ns, about 18.3 min); larger ones are clamped.
///
/// Why 2^40: `interval << SQRT_SHIFT` must fit a `u64` (2^40 << 23 = 2^63), and every time
/// stored ahead of `now` (at most one interval, 2^30 units) must stay well inside the 2^31-unit
/// window of the wrapping signed comparison.
const MAX_INTERVAL_NS: u64 = 1 << 40;

/// A CoDel state not looked at for this long (ns, about 18.3 min) may be misread:
/// its time lies at most one interval ahead of the last look, so after this gap it can
/// be up to 2^41 ns (2^31 units, the window of the wrapping compare) from `now`.
/// Callers reset it (see `Scheduler::begin_batch` and `Scheduler::park`).
pub(crate) const STALE_AFTER_NS: u64 = (1 << (31 + UNIT_SHIFT)) - MAX_INTERVAL_NS;

/// Fixed-point scale of the control law: `isqrt(count << 2 * SQRT_SHIFT)` is
/// `sqrt(count) * 2^SQRT_SHIFT`.
///
/// Why 23: `count <= 2^15` gives `count << 46 <= 2^61` and `interval <= 2^40` gives
/// `interval << 23 <= 2^63`, both within `u64`; the relative error of the integer square root is
/// then below 2^-23, far under one time unit for any interval up to [`MAX_INTERVAL_NS`].
const SQRT_SHIFT: u32 = 23;

/// Smallest interval [`CodelParams::from_budget`] produces, in ns (its target is then 1 us).
const MIN_BUDGET_NS: u64 = 5_000;

/// Target and interval for one priority, in ns (interval > 0, target > 0).
///
/// Invariants (not enforced, but [`Codel::should_drop`] never panics if they are broken):
/// `target_ns > 0` (0 means "always above target") and `interval_ns > 0` (0 means "drop as
/// soon as above target"). Intervals above [`MAX_INTERVAL_NS`] act as [`MAX_INTERVAL_NS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodelParams {
    /// Acceptable standing queue delay, in ns: sojourns below it never cause drops.
    pub(crate) target_ns: u64,
    /// How long, in ns, the sojourn must stay at or above target before the first drop; also
    /// the base spacing of drops (`interval / sqrt(count)`).
    pub(crate) interval_ns: u64,
}

impl CodelParams {
    /// From a priority's latency budget in ns: interval = budget, target = budget / 5.
    ///
    /// The budget stands in for CoDel's interval (the RFC sizes it as a worst-case round trip:
    /// how long a queue may stay above target before it is treated as standing). The target is
    /// 20 % of it, above RFC 8289's suggested 5-10 % of the interval (its defaults are 5 ms and
    /// 100 ms): a larger target drops less and tolerates more standing queue, still a fifth of
    /// the budget at most.
    ///
    /// The budget is clamped to `[5 us, 2^40 ns]`: below 5 us the interval would be only a few
    /// 1.024-us time units (mostly quantisation), and this keeps target >= 1 us; above 2^40 ns
    /// [`Codel`] could not represent the interval (see [`MAX_INTERVAL_NS`]).
    pub(crate) fn from_budget(budget_ns: u64) -> Self {
        let interval_ns = budget_ns.clamp(MIN_BUDGET_NS, MAX_INTERVAL_NS);
        Self {
            target_ns: interval_ns / 5,
            interval_ns,
        }
    }

    /// The interval in ns, clamped to [`MAX_INTERVAL_NS`] so the arithmetic cannot overflow.
    fn interval(&self) -> u64 {
        self.interval_ns.min(MAX_INTERVAL_NS)
    }
}

/// Per-stream CoDel state: 6 bytes.
///
/// `repr(C, packed(2))` keeps it at 6 bytes (alignment 2) instead of 8; fields are read and
/// written by value only (borrowing a packed field is a compile error, so none is borrowed).
#[repr(C, packed(2))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Codel {
    /// Not dropping: when the sojourn first went above target plus one interval (the RFC's
    /// `first_above_time`), or 0 for "not above". Dropping: the RFC's `drop_next`.
    /// Units: ns >> 10 (1.024 us), truncated to u32: wraps every ~73 min, compare with the
    /// wrapping signed difference (valid for spans < ~36 min). A real time that truncates to 0
    /// is stored as 1.
    time: u32,
    /// Bit 15: dropping. Bits 0..15: the RFC's `count` (saturating at 0x7fff).
    count: u16,
}

impl Codel {
    /// A stream that is not dropping, not above target, and has no previous episode.
    pub(crate) const IDLE: Self = Self { time: 0, count: 0 };

    /// Called once per head packet about to be sent, at time `now` (ns, monotonic), with that
    /// packet's sojourn (ns) and how many packets the stream still holds AFTER this one
    /// (`backlog_after`). Returns true when this packet must be dropped instead of sent (the
    /// caller counts the drop with reason `aqm`, then calls again for the next head packet).
    ///
    /// A packet with `backlog_after == 0` (the queue would hold nothing else: RFC "less than one
    /// MTU queued") is never dropped and counts as "below target". Successive calls must have
    /// non-decreasing `now` less than ~36 min apart while state is kept (see [`Codel`]).
    pub(crate) fn should_drop(
        &mut self,
        now: u64,
        sojourn_ns: u64,
        backlog_after: u32,
        p: &CodelParams,
    ) -> bool {
        if sojourn_ns < p.target_ns || backlog_after == 0 {
            self.below_target();
            false
        } else {
            self.forget_if_stale(now, p);
            if self.dropping() {
                self.drop_if_due(stamp(now), p)
            } else {
                self.above_target(now, p)
            }
        }
    }

    /// A stored time is never more than one interval ahead of `now`: `first_above_time`
    /// is set to `now + interval`, and `drop_next` to the last drop (due, so not after
    /// `now`) plus at most an interval. One that reads further ahead was left unexamined
    /// past the compare window (a stream backlogged through a DRR round longer than ~36
    /// min; a policy change that shortened the interval): it is forgotten as below
    /// target does (count kept), so it cannot hold CoDel back for up to half an hour.
    /// One that reads ahead by less holds it back one interval at most, as a new episode
    /// would; one that reads as past acts now, as a late call does.
    #[inline]
    fn forget_if_stale(&mut self, now: u64, p: &CodelParams) {
        // One unit of slack for the rounding of `stamp` (and its 0 -> 1).
        let latest = stamp(now.wrapping_add(p.interval())).wrapping_add(1);
        if self.time != 0 && !reached(latest, self.time) {
            self.below_target();
        }
    }

    /// The stream's queue went empty: leave the dropping state and forget `first_above_time` and
    /// count (a stream idle for a long time must not come back with stale times).
    pub(crate) fn reset(&mut self) {
        *self = Self::IDLE;
    }

    /// Whether in the dropping state (for tests/stats).
    pub(crate) fn dropping(&self) -> bool {
        self.count & DROPPING != 0
    }

    /// A packet outlived the hard sojourn limit and was dropped by the caller: CoDel's
    /// control law is ramping too slowly for this sender (an unresponsive one), so count
    /// that drop as one of CoDel's own. The next drop interval shrinks as `1/sqrt(count)`
    /// and the queue is pulled down toward the target instead of sitting at the limit
    /// (the same idea as CAKE's COBALT, which adds BLUE to CoDel for such senders).
    pub(crate) fn escalate(&mut self) {
        let count = self.drop_count().saturating_add(1).min(COUNT_MAX);
        self.count = (self.count & DROPPING) | count;
    }

    /// The state as stored in a stream slot (two fields, so the slot stays 64 bytes).
    #[inline(always)]
    pub(crate) fn from_parts(time: u32, count: u16) -> Self {
        Self { time, count }
    }

    /// A dropping state (count 1) whose `drop_next` is `at_ns`: for tests that plant a
    /// stale state in a stream slot.
    #[cfg(test)]
    pub(crate) fn dropping_from(at_ns: u64) -> Self {
        Self {
            time: stamp(at_ns),
            count: DROPPING | 1,
        }
    }

    /// The two fields to store back into the stream slot.
    #[inline(always)]
    pub(crate) fn parts(self) -> (u32, u16) {
        (self.time, self.count)
    }

    /// The RFC's `count` (number of drops in the current or last episode), without the flag.
    fn drop_count(&self) -> u16 {
        self.count & COUNT_MAX
    }

    /// Sojourn below target (or nothing else queued): `first_above_time = 0`, leave dropping.
    /// `count` is kept so a re-entry soon after can resume near the previous drop rate.
    pub(crate) fn below_target(&mut self) {
        self.time = 0;
        self.count = self.drop_count();
    }

    /// Above target and not dropping: start the one-interval timer, or enter the dropping state
    /// (dropping this packet) once it has run out. `now` is in ns.
    fn above_target(&mut self, now: u64, p: &CodelParams) -> bool {
        if self.time == 0 {
            // Wrapping add: a u64 wrap is a multiple of 2^42 ns, invisible after `stamp`.
            self.time = stamp(now.wrapping_add(p.interval()));
            return false;
        }
        let now_t = stamp(now);
        if !reached(now_t, self.time) {
            return false;
        }
        // Original CoDel re-entry: a recent episode's rate is a better start than 1.
        let prev = self.drop_count();
        let count = if prev > 2 { prev - 2 } else { 1 };
        self.count = DROPPING | count;
        self.time = control_law(now_t, count, p.interval());
        true
    }

    /// Dropping state, above target: drop when `drop_next` has been reached, and schedule the
    /// next drop from `drop_next` rather than from `now`, as the RFC does (so a late call does
    /// not slow the drop rate). `now_t` is in time units.
    fn drop_if_due(&mut self, now_t: u32, p: &CodelParams) -> bool {
        if !reached(now_t, self.time) {
            return false;
        }
        // `drop_count() <= COUNT_MAX`, so the `+ 1` cannot overflow a u16.
        let count = (self.drop_count() + 1).min(COUNT_MAX);
        self.count = DROPPING | count;
        self.time = control_law(self.time, count, p.interval());
        true
    }
}

/// A monotonic time in ns as a stored time: `ns >> 10` truncated to u32, with 0 (reserved for
/// "not above target") moved to 1, i.e. one unit late.
fn stamp(ns: u64) -> u32 {
    // Truncation is the point: times are compared modulo 2^32 units (2^42 ns).
    nonzero((ns >> UNIT_SHIFT) as u32)
}

/// `t`, or 1 if `t` is 0 (0 is reserved for "not above target").
fn nonzero(t: u32) -> u32 {
    t.max(1)
}

/// Whether time `now` is at or after time `t` (both in units), by wrapping signed difference:
/// correct when the two are less than 2^31 units (~36.6 min) apart.
fn reached(now: u32, t: u32) -> bool {
    now.wrapping_sub(t).cast_signed() >= 0
}

/// RFC 8289 `control_law(t, count) = t + interval / sqrt(count)`, with `t` and the result in
/// time units, `interval_ns` in ns (at most [`MAX_INTERVAL_NS`]) and `count >= 1` (0 is
/// treated as 1). The step is rounded to the nearest unit and is at least one unit.
fn control_law(t: u32, count: u16, interval_ns: u64) -> u32 {
    // sqrt(count) * 2^23, at least 2^23: never zero, so the division cannot panic.
    let root = (u64::from(count.max(1)) << (2 * SQRT_SHIFT)).isqrt();
    let step_ns = (interval_ns.min(MAX_INTERVAL_NS) << SQRT_SHIFT) / root;
    // step_ns <= 2^40, so the step is at most 2^30 + 1 units: the cast is lossless.
    let step = ((step_ns + HALF_UNIT_NS) >> UNIT_SHIFT).max(1) as u32;
    nonzero(t.wrapping_add(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typical low-latency priority: 1 ms target, 5 ms interval.
    const P: CodelParams = CodelParams {
        target_ns: 1_000_000,
        interval_ns: 5_000_000,
    };

    /// Sojourn well above `P`'s target.
    const ABOVE: u64 = 3_000_000;

    /// Serves one head packet the way the scheduler does: asks `should_drop` for the head, and
    /// for each next head at the same `now` while it says drop. `queued` counts the packets
    /// held including the head. Returns how many packets were dropped before one was sent (or
    /// the queue ran out).
    fn serve(c: &mut Codel, now: u64, sojourn_ns: u64, queued: u32, p: &CodelParams) -> u32 {
        let mut drops = 0;
        let mut left = queued;
        while left > 0 {
            left -= 1;
            if !c.should_drop(now, sojourn_ns, left, p) {
                break;
            }
            drops += 1;
        }
        drops
    }

    /// A small deterministic pseudo-random sequence (64-bit LCG, high bits).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    /// Feeds above-target head packets every 100 us from `now` until one is dropped; returns
    /// the time of that drop (the entry into the dropping state).
    fn enter(c: &mut Codel, mut now: u64) -> u64 {
        assert!(!c.dropping());
        for _ in 0..1_000 {
            if serve(c, now, ABOVE, 1_000, &P) > 0 {
                assert!(c.dropping());
                return now;
            }
            now += 100_000;
        }
        panic!("never entered the dropping state");
    }

    /// Feeds above-target head packets every 100 us from `now` until `count` reaches `target`;
    /// returns the time of the last call.
    fn drop_until(c: &mut Codel, mut now: u64, target: u16) -> u64 {
        while c.drop_count() < target {
            now += 100_000;
            serve(c, now, ABOVE, 1_000, &P);
            assert!(c.dropping());
        }
        assert_eq!(c.drop_count(), target);
        now
    }

    #[test]
    fn never_drops_below_target() {
        let mut c = Codel::IDLE;
        let mut rng = 42;
        let mut now = 1_000;
        for i in 0..100_000 {
            now += 1 + lcg(&mut rng) % 200_000;
            // Include the edge sojourn = target - 1 regularly.
            let sojourn = if i % 10 == 0 {
                P.target_ns - 1
            } else {
                lcg(&mut rng) % P.target_ns
            };
            let backlog = (lcg(&mut rng) % 100) as u32;
            assert!(!c.should_drop(now, sojourn, backlog, &P), "call {i}");
            assert_eq!(c, Codel::IDLE, "call {i}");
        }
    }

    #[test]
    fn first_drop_after_one_interval() {
        const STEP: u64 = 100;
        let t0: u64 = 1_000_000_777;
        // The threshold `t0 + interval` in units; the first call at or past its start drops.
        let unit_start = ((t0 + P.interval_ns) >> UNIT_SHIFT) << UNIT_SHIFT;
        let expected = t0 + (unit_start - t0).div_ceil(STEP) * STEP;
        let mut c = Codel::IDLE;
        let mut now = t0;
        while !c.should_drop(now, ABOVE, 10, &P) {
            assert!(now < unit_start, "no drop at {now}");
            now += STEP;
        }
        assert_eq!(now, expected);
        // Within one 1.024-us unit before the exact threshold, and no later than one step after.
        assert!(now + 1024 > t0 + P.interval_ns && now < t0 + P.interval_ns + STEP);
        assert!(c.dropping());
        assert_eq!(c.drop_count(), 1);
        // The next head at the same instant is sent: the next drop is one interval away.
        assert!(!c.should_drop(now, ABOVE, 9, &P));
    }

    #[test]
    fn drop_spacing_follows_inverse_sqrt() {
        const STEP: u64 = 100;
        let mut c = Codel::IDLE;
        let mut now: u64 = 2_000_000_000;
        let mut drops = Vec::new();
        while drops.len() < 200 {
            match serve(&mut c, now, ABOVE, 1_000, &P) {
                0 => {}
                1 => drops.push(now),
                n => panic!("{n} drops at one instant with {STEP} ns steps"),
            }
            now += STEP;
        }
        assert_eq!(c.drop_count(), 200);
        // Each step is rounded to the nearest unit (<= 512 ns off), the integer square root is
        // within a few ns, and each drop is seen up to one call step late.
        let tolerance = (HALF_UNIT_NS + STEP + 4) as f64;
        for k in 1..drops.len() {
            let gap = (drops[k] - drops[k - 1]) as f64;
            let reference = P.interval_ns as f64 / (k as f64).sqrt();
            assert!(
                (gap - reference).abs() <= tolerance,
                "drop {k}: gap {gap} ns, reference {reference} ns",
            );
        }
    }

    #[test]
    fn exit_and_reentry_counts() {
        let mut c = Codel::IDLE;
        let now = enter(&mut c, 1_000_000_000);
        let now = drop_until(&mut c, now, 6);
        // One packet below target leaves the dropping state and clears first_above_time.
        assert!(!c.should_drop(now + 1_000, 10, 50, &P));
        assert!(!c.dropping());
        assert_eq!((c.time, c.drop_count()), (0, 6));
        // Re-entry shortly after, still backlogged: count resumes at 6 - 2.
        let now = enter(&mut c, now + 2_000);
        assert_eq!(c.drop_count(), 4);
        assert!(!c.should_drop(now + 1_000, 10, 50, &P));
        let now = enter(&mut c, now + 2_000);
        assert_eq!(c.drop_count(), 2);
        // A previous count of 2 or less restarts at 1.
        assert!(!c.should_drop(now + 1_000, 10, 50, &P));
        let now = enter(&mut c, now + 2_000);
        assert_eq!(c.drop_count(), 1);
        // After a reset (queue went empty) a high count is forgotten.
        let now = drop_until(&mut c, now, 8);
        c.reset();
        assert_eq!(c, Codel::IDLE);
        enter(&mut c, now + 2_000);
        assert_eq!(c.drop_count(), 1);
    }

    #[test]
    fn reset_while_dropping_forgets_times() {
        let mut c = Codel::IDLE;
        let now = enter(&mut c, 5_000_000_000);
        c.reset();
        assert!(!c.dropping());
        // Back after a long idle: a full interval above target is needed again.
        let back = now + 3_600_000_000_000;
        assert!(!c.should_drop(back, ABOVE, 10, &P));
        assert!(!c.should_drop(back + P.interval_ns - 2_048, ABOVE, 10, &P));
        assert!(c.should_drop(back + P.interval_ns, ABOVE, 10, &P));
    }

    /// A stream left unexamined past the compare window while backlogged (its DRR round
    /// took longer than ~36 min, then visits come often again) finds its stored time
    /// reading up to ~33 min ahead. Such a time cannot be real (a stored time is never
    /// more than one interval ahead of `now`): it is forgotten, so CoDel acts again
    /// within one interval, in either state, instead of after half an hour.
    #[test]
    fn a_time_left_past_the_compare_window_holds_codel_back_one_interval_at_most() {
        for dropping in [false, true] {
            let mut c = Codel::IDLE;
            let mut now = 1_000_000_000;
            if dropping {
                let entered = enter(&mut c, now);
                now = drop_until(&mut c, entered, 3);
            } else {
                assert!(!c.should_drop(now, ABOVE, 10, &P));
                assert!(c.time != 0, "first_above_time is set");
            }
            // 40 minutes later: 2^31 units are ~36.7 min, so the time reads ahead.
            let back = now + 40 * 60 * 1_000_000_000;
            let first = (0..1_000u64)
                .map(|k| back + k * 100_000)
                .find(|&t| serve(&mut c, t, ABOVE, 1_000, &P) > 0)
                .expect("CoDel drops again within 100 ms");
            assert!(
                first - back <= P.interval_ns + 100_000,
                "dropping {dropping}: first drop {} ns after the gap",
                first - back
            );
        }
    }

    #[test]
    fn last_packet_never_dropped() {
        let mut c = Codel::IDLE;
        let mut now = 1_000;
        for _ in 0..100_000 {
            now += 100_000;
            assert!(!c.should_drop(now, 10_000_000_000, 0, &P));
            assert_eq!(c, Codel::IDLE);
        }
        // Also leaves the dropping state, as "below target" does.
        enter(&mut c, now);
        assert!(!c.should_drop(now + 10_000_000, 10_000_000_000, 0, &P));
        assert!(!c.dropping());
    }

    /// A mixed scenario on a 50-unit (51.2 us) call grid, with an interval and target that are
    /// whole units: then the sub-unit phase of `offset` cannot move a boundary across a call,
    /// so any difference between offsets would come from the wrap alone. It starts above
    /// target, so with `offset = 2^42 - 5 ms` the u32 wraps just as the first interval runs
    /// out. Returns the drops per call.
    fn wrap_scenario(offset: u64) -> Vec<u32> {
        const GRID: u64 = 50 << UNIT_SHIFT;
        let p = CodelParams {
            target_ns: 1_000 << UNIT_SHIFT,
            interval_ns: 5_000 << UNIT_SHIFT,
        };
        let mut c = Codel::IDLE;
        let mut rng = 7;
        (0..40_000u64)
            .map(|i| {
                let now = offset.wrapping_add(3_000 + i * GRID);
                let r = lcg(&mut rng);
                if i % 7_919 == 7_918 {
                    c.reset();
                }
                match (i / 2_000) % 5 {
                    // Sustained standing queue.
                    0 => serve(&mut c, now, 3 * p.target_ns, 20, &p),
                    // Below target: leaves the dropping state.
                    1 => serve(&mut c, now, r % p.target_ns, 20, &p),
                    // Above target with varying backlog and rare dips below target.
                    2 if r.is_multiple_of(1_009) => serve(&mut c, now, 0, 20, &p),
                    2 => serve(
                        &mut c,
                        now,
                        p.target_ns + r % 4_000_000,
                        2 + (r % 40) as u32,
                        &p,
                    ),
                    // Served only every 64th call (3.3 ms): several drops at one `now`.
                    3 if i % 64 == 0 => serve(&mut c, now, 3 * p.target_ns, 1_000, &p),
                    3 => 0,
                    // Often nothing else queued.
                    _ => serve(&mut c, now, 2 * p.target_ns, (r % 5) as u32, &p),
                }
            })
            .collect()
    }

    #[test]
    fn time_wrap_gives_identical_decisions() {
        let offsets = [0, (1u64 << 42) - 5_000_000, 7 * (1u64 << 42) + 123];
        // The second run really crosses the u32 wrap of `ns >> 10`, 5 ms in.
        let first = stamp(offsets[1] + 3_000);
        let last = stamp(offsets[1] + 3_000 + 40_000 * (50 << UNIT_SHIFT));
        assert!(first > last);
        let base = wrap_scenario(offsets[0]);
        let total: u32 = base.iter().sum();
        let bursts = base.iter().filter(|&&d| d > 1).count();
        assert!(
            total > 1_000 && bursts > 50,
            "scenario too tame: {total}, {bursts}"
        );
        for off in &offsets[1..] {
            assert!(wrap_scenario(*off) == base, "offset {off}");
        }
    }

    #[test]
    fn s14_escalate_raises_the_count_and_keeps_the_state() {
        let p = CodelParams::from_budget(50_000_000);
        let mut c = Codel::IDLE;
        for _ in 0..10 {
            c.escalate();
        }
        assert_eq!((c.drop_count(), c.dropping()), (10, false));
        // Re-entry after escalation starts at count - 2: the first drop comes one
        // interval after the sojourn rose, the next after interval / sqrt(8).
        let t0 = 1_000_000_000;
        assert!(!c.should_drop(t0, p.target_ns + 1, 5, &p));
        assert!(c.should_drop(t0 + p.interval_ns + 2_048, p.target_ns + 1, 5, &p));
        assert_eq!(c.drop_count(), 8);
        c.escalate();
        assert_eq!((c.drop_count(), c.dropping()), (9, true));
    }

    #[test]
    fn state_is_six_bytes() {
        assert_eq!(size_of::<Codel>(), 6);
        assert_eq!(align_of::<Codel>(), 2);
    }

    #[test]
    fn control_law_values() {
        // count 1: one interval (5 ms = 4882.8 units, rounds to 4883).
        assert_eq!(control_law(100, 1, 5_000_000), 100 + 4_883);
        // count 4: half an interval (2.5 ms = 2441.4 units).
        assert_eq!(control_law(100, 4, 5_000_000), 100 + 2_441);
        // count 0 is treated as 1.
        assert_eq!(control_law(100, 0, 5_000_000), 100 + 4_883);
        // Tiny intervals still move at least one unit; the result wraps and skips 0.
        assert_eq!(control_law(7, COUNT_MAX, 1), 8);
        assert_eq!(control_law(u32::MAX, COUNT_MAX, 1), 1);
        // Huge intervals clamp to 2^40 ns = 2^30 units, with no overflow at any count.
        assert_eq!(control_law(0, 1, u64::MAX), 1 << 30);
        assert_eq!(control_law(0, 4, u64::MAX), 1 << 29);
        assert_eq!(control_law(0, COUNT_MAX, u64::MAX), 5_931_732);
    }

    #[test]
    fn stamp_and_wrapping_compare() {
        assert_eq!(stamp(0), 1);
        assert_eq!(stamp(1_023), 1);
        assert_eq!(stamp(1_024), 1);
        assert_eq!(stamp(2_048), 2);
        assert_eq!(stamp(1 << 42), 1);
        assert_eq!(stamp((1 << 42) - 1), u32::MAX);
        assert!(reached(5, 5) && reached(6, 5) && !reached(4, 5));
        assert!(reached(2, u32::MAX - 3) && !reached(u32::MAX - 3, 2));
        assert!(reached(1 << 30, 0) && !reached(0, 1 << 30));
    }

    #[test]
    fn from_budget_values() {
        let p = CodelParams::from_budget(10_000_000);
        assert_eq!((p.target_ns, p.interval_ns), (2_000_000, 10_000_000));
        let p = CodelParams::from_budget(0);
        assert_eq!((p.target_ns, p.interval_ns), (1_000, 5_000));
        let p = CodelParams::from_budget(u64::MAX);
        assert_eq!(
            (p.target_ns, p.interval_ns),
            (MAX_INTERVAL_NS / 5, MAX_INTERVAL_NS)
        );
    }

    #[test]
    fn count_saturates() {
        let p = CodelParams::from_budget(5_000);
        let mut c = Codel::IDLE;
        assert!(!c.should_drop(1_000_000, 2_000, 10, &p));
        assert!(c.should_drop(1_010_000, 2_000, 10, &p));
        // Far ahead of drop_next: every call drops, since each step is only a few units.
        for _ in 0..40_000 {
            assert!(c.should_drop(1_000_000_000, 2_000, 10, &p));
        }
        assert!(c.dropping());
        assert_eq!(c.drop_count(), COUNT_MAX);
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let p = CodelParams {
            target_ns: 0,
            interval_ns: u64::MAX,
        };
        let mut c = Codel::IDLE;
        for now in [u64::MAX - 5, u64::MAX, 0, 1 << 41] {
            c.should_drop(now, u64::MAX, u32::MAX, &p);
        }
        let p = CodelParams {
            target_ns: 1,
            interval_ns: 0,
        };
        let mut c = Codel::IDLE;
        // Interval 0: the timer runs out at once; the first drop comes on the next call.
        assert!(!c.should_drop(u64::MAX, 5, 1, &p));
        assert!(c.should_drop(u64::MAX, 5, 1, &p));
    }
}
