//! Fair queueing between tiers and inside them (S1-S4).
//!
//! Two levels, each O(1) per packet:
//! 1. **Service classes** (the policy's tiers, plus the aging lane of S9, whose weight is
//!    the lowest tier's share, doubled while that tier has nothing else queued) share the
//!    link by start-time fair queueing (SFQ) with weight `share_percent`: the backlogged class
//!    with the earliest start tag is served and its tag advances by `len / share`. A
//!    class that becomes backlogged starts at the virtual time, so idle classes lend
//!    their share (S2) and bank none.
//! 2. **Streams inside a class** are served by weighted deficit round robin with a
//!    fresh list in front, as fq_codel does: each stream's quantum is proportional to
//!    its own weight (`Q * w / 2^shift`, where `2^shift` is the default weight of the
//!    tier's lowest priority; see [`Wfq::top_up`] for its rounding and doubling), so
//!    every stream carries its own credit and only it is charged for what it sends
//!    (S3). A stream that becomes backlogged from idle joins the fresh list with one
//!    quantum and is served before the round; once that credit is spent it moves to
//!    the tail of the round. A stream that empties *lingers*
//!    behind the round (as in fq_codel): until the round has served every stream that
//!    was in it when it emptied, a packet for it puts it at the round's tail with the
//!    credit it had, not back in the fresh list. So going idle and coming back cannot
//!    earn more than one extra quantum per round, while a sparse stream is served at
//!    once (S4: each backlogged stream whose quantum covers its packet is served at
//!    least once per round; one with a smaller quantum sits out the rounds its debt
//!    needs). A debt outlives lingering: a stream that returns owing is credited one
//!    quantum per round gone by and, while it still owes, joins the round's tail (see
//!    [`Wfq::still_owes`]).
//!
//! Lingering is kept as a mark, not a list entry. Each class counts the entries ever
//! pushed to its round's tail and ever removed from it (`pushes`, `pops`). A stream
//! that empties leaves the lists at once, noting in its unused links the `pushes` count
//! of the moment: the place it would have taken at the tail. It lingers while `pops` is
//! below that count, i.e. until every stream that was ahead of that place has left the
//! round's head. An empty stream therefore costs no visit when the round comes round to
//! it (at 4K random streams that visit, a likely cache miss, happened for about 0.7
//! packets in 1). The one exception is a stream that empties during its turn at the
//! round's head with credit left: it stays there until the next decision of its class,
//! when its record is still in cache, and leaves then with no mark (as in fq_codel: its
//! next packet makes it fresh). A stream unlinked from the middle of the round
//! (promoted, demoted, moved, closed, disconnected) counts as removed, so a mark can run
//! out a few removals early after control actions; the counts are `u64` and never wrap.
//! A mark is forgotten when its stream changes class, and a tier remap spends them all.
//!
//! Tags are `u64` fixed point and wrap; they are compared by the sign of their wrapping
//! difference, which is exact while the tags compared lie within 2^63 of each other.
//! Backlogged classes are always within one maximal increment (`< 2^56`) of the
//! virtual time. Idle classes are kept in range by construction: whenever the virtual
//! time crosses a multiple of 2^61, every idle class whose tag fell behind it is moved up
//! to it (O(classes), once per 2^61 of virtual time). An idle tag is thus never more
//! than `2^61 + 2^56` behind, whatever the length of the idle period.

use super::policy::{MAX_TIERS, PRIORITIES};
use super::pool::NIL;
use super::prefetch::prefetch;
use super::stream::{Flags, List, Stream};
use super::vtime::{before, cost, inverse};

/// Index of the aging lane among the service classes (after every possible tier).
pub(crate) const LANE: usize = MAX_TIERS;
/// Service classes: up to eight tiers and the aging lane.
pub(crate) const CLASSES: usize = MAX_TIERS + 1;
/// Largest DRR quantum of one stream, in bytes (keeps credit inside `i32`).
const MAX_STREAM_QUANTUM: u64 = 1 << 30;
/// The virtual time's crossing of a multiple of this triggers the idle-tag refresh.
const REFRESH_BIT: u32 = 61;
/// Step of each class's dither sequence (2^32 / golden ratio): see [`Wfq::top_up`].
const DITHER_STEP: u32 = 0x9E37_79B9;
/// Rotations of streams still in debt after their top-up, in one decision of one
/// class, after which that class's quanta double (see [`Class::boost`]).
const ROTATIONS_BEFORE_BOOST: u32 = 8;
/// Most doublings of a class's quanta (`Q * w` stays far inside `u64`).
const MAX_BOOST: u32 = 24;
/// Whole rounds at boost 0 without a rise after which a class stops keeping the
/// boost's books (see [`Wfq::settle_boost`]).
const CALM_ROUNDS: u8 = 8;

#[derive(Clone, Copy, Debug)]
struct Class {
    /// Quantum of weight `w` is `Q * w / 2^shift` (see [`Wfq::top_up`]).
    shift: u32,
    /// Fixed-point inverse of the class's share.
    inv: u64,
    /// Streams that (re)joined with a fresh quantum, served before the round.
    fresh: List,
    /// The DRR round.
    round: List,
    /// Packets queued in the streams listed here.
    queued: u64,
    /// Entries ever pushed to the round's tail, and ever removed from it (a rotation is
    /// one of each; an unlink from the middle counts as a removal). The round holds
    /// `pushes - pops` streams, and a stream that would have been pushed when `pushes`
    /// was `k` would now stand at the head once `pops` reaches `k`.
    pushes: u64,
    pops: u64,
    /// Streams listed here (backlogged, or at the round's head with an empty queue).
    listed: u32,
    /// Weyl sequence that rounds each new turn's quantum up or down (see
    /// [`Wfq::top_up`]).
    dither: u32,
    /// Doublings of the quanta the class's visits hand out, for now. DRR is O(1)
    /// per decision only while a stream's quantum covers its packets; when quanta are
    /// smaller (jumbo packets, weight overrides far below the tier's base) every stream
    /// of the round can be in debt at once, and finding one with credit took up to
    /// (streams x packet / quantum) rotations in one call. A decision that rotates
    /// `ROTATIONS_BEFORE_BOOST` indebted streams doubles the quanta the class's visits
    /// hand out instead: the ratios between streams, hence the shares, do not change,
    /// and a decision makes at most `ROTATIONS_BEFORE_BOOST * MAX_BOOST` rotations
    /// (at `MAX_BOOST` every quantum covers the largest packet; a decision lowers the
    /// boost at most once, from 1 or more, and only before its
    /// `ROTATIONS_BEFORE_BOOST / 2`-th rotation, hence before any rise). It
    /// comes down by one at the end of a whole round without pressure (see
    /// [`Wfq::settle_boost`]), and to 0 when the class runs out of packets (or a policy
    /// changes its quanta). A fresh stream's credit and AQM's comparison use the quantum without
    /// it. A change never favours a place in the round: a fall waits for the round's
    /// end, and the streams a round visited before a rise get the difference at their
    /// next visit (see [`Rises`]).
    boost: u32,
    /// The boost's books are kept (see [`Wfq::settle_boost`]): from a rise until the class
    /// runs out of packets, or has gone `CALM_ROUNDS` rounds at boost 0 without one.
    tracked: bool,
    /// `pops` at the last pressure: a rise, or a visit after
    /// `ROTATIONS_BEFORE_BOOST / 2` indebted streams in one decision.
    pressed_at: u64,
    /// A decision ended in a round that began after the last pressure: the boost
    /// comes down at the round's end.
    due: bool,
    /// Whole rounds in a row at boost 0 without a rise, while tracked.
    calm: u8,
    /// While tracked: `pops` when the current round began, and at which it ends
    /// (`pushes` when it began: every stream then in the round has been visited once).
    round_start: u64,
    round_end: u64,
}

/// The rises of a class's boost during one round. A stream visited in that round is
/// pushed back to the tail, at push index `j`, after its visit, and is visited next
/// when `pops` reaches `j`; it was topped up with boost `from + #{k : at[k] <= j}`,
/// and is owed the difference to the round's final boost `from + n`.
#[derive(Clone, Copy, Debug)]
struct Rises {
    /// The boost when the round began.
    from: u32,
    /// Rises so far (`from + n` is the class's boost).
    n: u32,
    /// `pushes` at each rise, in order.
    at: [u64; MAX_BOOST as usize],
}

impl Rises {
    const NONE: Rises = Rises {
        from: 0,
        n: 0,
        at: [0; MAX_BOOST as usize],
    };
}

impl Class {
    const IDLE: Class = Class {
        shift: 0,
        inv: 1 << 40,
        fresh: List::EMPTY,
        round: List::EMPTY,
        queued: 0,
        pushes: 0,
        pops: 0,
        listed: 0,
        dither: 0,
        boost: 0,
        tracked: false,
        pressed_at: 0,
        due: false,
        calm: 0,
        round_start: 0,
        round_end: 0,
    };
}

/// The two levels of fair queueing and the aging cursor over the lowest tier.
#[derive(Debug)]
pub(crate) struct Wfq {
    classes: [Class; CLASSES],
    /// SFQ start tag of each class, dense for the pick's scan (indexed by class; the
    /// entries past `CLASSES` are unused and let a class index masked to 4 bits be
    /// used without a bounds check).
    tags: [u64; 16],
    tier_of: [u8; PRIORITIES],
    /// Classes with queued packets (bit per class).
    active: u16,
    /// SFQ virtual time: start tag of the class last served.
    vtime: u64,
    /// `Q`: quantum of a stream at its tier's base weight, in bytes.
    quantum: u32,
    /// The tier aging applies to (the one holding priority 0).
    low: usize,
    /// Next stream of the lowest tier the aging guard checks, or `NIL`.
    cursor: u32,
    /// Inverse share of the aging lane while the lowest tier itself is idle: the lane
    /// then also takes that tier's share (twice the tier's share in all).
    lane_inv_alone: u64,
    /// Each class's rises of its boost in the current round and in the round before
    /// (cold: read only while the class's boost is tracked).
    this_round: [Rises; CLASSES],
    last_round: [Rises; CLASSES],
}

impl Wfq {
    pub(crate) fn new() -> Self {
        Self {
            classes: [Class::IDLE; CLASSES],
            tags: [0; 16],
            tier_of: [0; PRIORITIES],
            active: 0,
            vtime: 0,
            quantum: 1,
            low: 0,
            cursor: NIL,
            lane_inv_alone: 1 << 40,
            this_round: [Rises::NONE; CLASSES],
            last_round: [Rises::NONE; CLASSES],
        }
    }

    /// Installs tier membership, shares and the quantum. When the mapping of priorities
    /// to tiers changes, every listed stream is re-filed into its new class's round
    /// (O(listed streams), a control event; no allocation). Each class whose quanta
    /// change is requantized (see [`Wfq::requantize`]); the others keep their boost.
    pub(crate) fn configure(
        &mut self,
        streams: &mut [Stream],
        tier_of: [u8; PRIORITIES],
        shares: &[u8],
        quantum: u32,
    ) {
        let requantized = quantum != self.quantum;
        self.quantum = quantum;
        let remapped = tier_of != self.tier_of;
        self.tier_of = tier_of;
        self.low = usize::from(tier_of[0]);
        let mut rescaled = [remapped || requantized; CLASSES];
        for (t, class) in self.classes.iter_mut().take(MAX_TIERS).enumerate() {
            class.inv = inverse(u64::from(shares.get(t).copied().unwrap_or(1)));
            // Base weight: that of the tier's lowest priority.
            let shift = tier_of
                .iter()
                .position(|&x| usize::from(x) == t)
                .unwrap_or(0) as u32;
            rescaled[t] |= shift != class.shift;
            class.shift = shift;
        }
        let low = self.classes[self.low];
        let low_share = u64::from(shares.get(self.low).copied().unwrap_or(1));
        self.classes[LANE].inv = low.inv;
        rescaled[LANE] |= low.shift != self.classes[LANE].shift;
        self.classes[LANE].shift = low.shift;
        self.lane_inv_alone = inverse(2 * low_share);
        if remapped {
            self.refile(streams);
        }
        // A class whose quanta changed starts over: no boost, and no listed stream
        // keeps more than one new quantum of credit, so the new policy governs the
        // very next decision (a turn begun under a quantum of 2^20 bytes ran on for
        // 134,217 packets after a change to 1,514, found by a red-team review). A
        // class whose quanta did not change keeps its boost: re-applying a policy must
        // not move shares (the same review measured up to 11% when a boosted class
        // lost its boost at every decision).
        for (c, rescaled) in rescaled.into_iter().enumerate() {
            if rescaled {
                self.requantize(streams, c);
            }
        }
        self.cursor = NIL;
    }

    /// Class `c` under new quanta: its boost is dropped and each listed stream's credit
    /// is capped at one quantum. O(listed streams of the class).
    fn requantize(&mut self, streams: &mut [Stream], c: usize) {
        self.classes[c].boost = 0;
        self.classes[c].tracked = false;
        for head in [self.classes[c].fresh.head, self.classes[c].round.head] {
            let mut s = head;
            while s != NIL {
                let q = self.quantum_of(c, streams[s as usize].weight);
                let st = &mut streams[s as usize];
                st.deficit = st.deficit.min(q);
                s = st.next;
            }
        }
    }

    /// Replaces the tiers' SFQ weights (any positive scale; 0 counts as 1) without
    /// touching membership or queues: link sharing across workers (T6) re-weights a
    /// worker's tiers to the part of each tier's share that worker carries.
    ///
    /// The weights come in bit/s. They are first shifted down together until the
    /// largest fits in `WEIGHT_BITS` bits: an inverse is `2^FRAC_BITS / weight`, so
    /// the weights of a terabit link (2.5e11, 6e11, 1.5e11) gave inverses of 4, 1 and
    /// 7, and shares of 18/72/10 for 25/60/15; above 2^63, doubling the Low tier's
    /// weight for the lane overflowed. Scaled, every inverse is at least 2^16, so a
    /// ratio is off by at most 2^-16.
    pub(crate) fn set_weights(&mut self, weights: &[u64]) {
        const WEIGHT_BITS: u32 = 24;
        let weight = |t: usize| weights.get(t).copied().unwrap_or(1).max(1);
        let max = (0..MAX_TIERS).map(weight).max().unwrap_or(1);
        let shift = (u64::BITS - max.leading_zeros()).saturating_sub(WEIGHT_BITS);
        let scaled = |t: usize| (weight(t) >> shift).max(1);
        for (t, class) in self.classes.iter_mut().take(MAX_TIERS).enumerate() {
            class.inv = inverse(scaled(t));
        }
        self.classes[LANE].inv = self.classes[self.low].inv;
        self.lane_inv_alone = inverse(2 * scaled(self.low));
    }

    /// Moves every listed stream of a tier into the round of the tier it now belongs to.
    fn refile(&mut self, streams: &mut [Stream]) {
        let mut old = [List::EMPTY; 2 * MAX_TIERS];
        // Every tier's entries leave, and every lingering mark from before is spent
        // whatever class its stream is in now: the counts move up to the largest push
        // count (the aging lane, not refiled, keeps its difference).
        let top = self.classes.iter().map(|c| c.pushes).max().unwrap_or(0);
        for (i, c) in self.classes.iter_mut().enumerate() {
            if i < MAX_TIERS {
                (c.pushes, c.pops) = (top, top);
            } else {
                let up = top - c.pushes;
                (c.pushes, c.pops) = (top, c.pops + up);
            }
        }
        for t in 0..MAX_TIERS {
            let c = &mut self.classes[t];
            old[2 * t] = std::mem::replace(&mut c.fresh, List::EMPTY);
            old[2 * t + 1] = std::mem::replace(&mut c.round, List::EMPTY);
            c.queued = 0;
            c.listed = 0;
            self.active &= !(1 << t);
        }
        for list in old {
            let mut s = list.head;
            while s != NIL {
                let next = streams[s as usize].next;
                streams[s as usize].clear(Flags::FRESH);
                let t = self.class_of(&streams[s as usize]);
                let len = u64::from(streams[s as usize].len);
                self.round_push(streams, t, s);
                self.classes[t].listed += 1;
                self.add_queued(t, len);
                s = next;
            }
        }
    }

    /// Service class of a stream: its tier, or the aging lane while promoted.
    #[inline(always)]
    pub(crate) fn class_of(&self, st: &Stream) -> usize {
        if st.has(Flags::PROMOTED) {
            LANE
        } else {
            usize::from(self.tier_of[usize::from(st.prio())])
        }
    }

    /// Tier serving `prio`.
    #[inline(always)]
    pub(crate) fn tier_of(&self, prio: u8) -> usize {
        usize::from(self.tier_of[usize::from(prio & 7)])
    }

    /// Whether priority `prio` is in the tier aging applies to (the lowest).
    pub(crate) fn is_low(&self, prio: u8) -> bool {
        self.tier_of(prio) == self.low
    }

    /// DRR quantum of a stream of weight `w` in class `c`, in bytes, rounded down
    /// (>= 1): a fresh stream's credit, the cap on a relinked stream's credit, and what
    /// AQM compares a backlog with.
    #[inline(always)]
    pub(crate) fn quantum_of(&self, c: usize, w: u16) -> i32 {
        let q = (u64::from(self.quantum) * u64::from(w)) >> self.classes[c].shift;
        q.clamp(1, MAX_STREAM_QUANTUM) as i32
    }

    /// The credit a stream of weight `w` in class `c` gains for a new DRR turn: its
    /// exact quantum `Q * w / 2^shift`, which has `shift` fractional bits, rounded down
    /// or up by adding the top `shift` bits of the class's dither sequence before the
    /// shift. The sequence steps by 2^32 / golden ratio at each top-up, so the
    /// fractions it adds are spread evenly over `[0, 1)` for every stream whatever the
    /// order of the turns, and each stream's credit over many turns is its exact
    /// quantum times the turns, give or take a byte. Rounding down alone gave a weight-1
    /// stream in a tier based at P7 11 bytes a turn for 11.83 and took 2.9% of its share
    /// beside a weight-2 one (4.3% beside weight 3), and turned both quanta of
    /// weights 1 and 3 with a 64-byte `Q` into 1 byte (50/50 for 25/75). A turn may get
    /// 0 bytes when the exact quantum is below one (the stream just waits its turn).
    /// While the class is boosted, the quantum is doubled `boost` times. Without
    /// `new_turn` it is 0 and the dither does not move: no branch either way.
    #[inline(always)]
    fn top_up(&mut self, c: usize, w: u16, new_turn: bool) -> i32 {
        let mask = u32::from(new_turn).wrapping_neg();
        let class = &mut self.classes[c];
        class.dither = class.dither.wrapping_add(DITHER_STEP & mask);
        self.credit(c, w, self.classes[c].boost) & mask as i32
    }

    /// A turn's credit for weight `w` in class `c` with boost `boost`, rounded with the
    /// class's dither as it stands (see [`Wfq::top_up`]).
    #[inline(always)]
    fn credit(&self, c: usize, w: u16, boost: u32) -> i32 {
        let class = &self.classes[c];
        // The dither's top `shift` bits: a fraction of one byte in units of 2^-shift.
        let fraction = (u64::from(class.dither) << class.shift) >> 32;
        let exact = (u64::from(self.quantum) * u64::from(w)) << boost;
        let q = (exact + fraction) >> class.shift;
        q.min(MAX_STREAM_QUANTUM) as i32
    }

    #[inline(always)]
    fn add_queued(&mut self, c: usize, n: u64) {
        if n == 0 {
            return;
        }
        let class = &mut self.classes[c];
        if class.queued == 0 && self.active & (1 << c) == 0 {
            // SFQ: a class that becomes backlogged starts at the virtual time, or keeps
            // its finish tag if that is still ahead (it used its share just before).
            let tag = &mut self.tags[c & 15];
            if before(*tag, self.vtime) {
                *tag = self.vtime;
            }
            self.active |= 1 << c;
        }
        class.queued += n;
    }

    #[inline(always)]
    fn sub_queued(&mut self, c: usize, n: u64) {
        let class = &mut self.classes[c];
        debug_assert!(class.queued >= n, "class queue count underflow");
        class.queued -= n;
        if class.queued == 0 {
            self.active &= !(1 << c);
            class.boost = 0;
            class.tracked = false;
        }
    }

    /// A packet was appended to stream `s`, which holds `len >= 1` packets now and is
    /// not parked (throttled). Links it into its class if it was unlisted (see
    /// [`Wfq::link_into`]).
    #[inline(always)]
    pub(crate) fn packet_added(&mut self, streams: &mut [Stream], s: u32) {
        let st = &streams[s as usize];
        let c = self.class_of(st);
        if st.has(Flags::LISTED) {
            self.add_queued(c, 1);
        } else {
            self.link_into(streams, s, c);
        }
    }

    /// Links an unlisted stream (with whatever it holds) into its class's fresh list
    /// with one quantum of credit (or, lingering, at the round's tail with the credit
    /// it kept): idle streams bank nothing beyond that.
    pub(crate) fn link(&mut self, streams: &mut [Stream], s: u32) {
        let c = self.class_of(&streams[s as usize]);
        self.link_into(streams, s, c);
    }

    /// [`Wfq::link`] into class `c`, the stream's class. A stream that left the lists
    /// empty and would still be lingering in the round (see the module docs) joins the
    /// round's tail with the credit it had instead.
    #[inline(always)]
    fn link_into(&mut self, streams: &mut [Stream], s: u32, c: usize) {
        if self.classes[c].pops < streams[s as usize].linger() {
            // The credit it kept, but at most one quantum (its weight may have been
            // lowered meanwhile).
            self.relink_into(streams, s, c);
            return;
        }
        let q = self.quantum_of(c, streams[s as usize].weight);
        if streams[s as usize].deficit < 0 && self.still_owes(streams, s, c, q) {
            self.relink_into(streams, s, c);
            return;
        }
        let st = &mut streams[s as usize];
        debug_assert!(!st.has(Flags::LISTED), "stream linked twice");
        st.deficit = q;
        st.set(Flags::LISTED);
        st.set(Flags::FRESH);
        let len = u64::from(st.len);
        self.classes[c].fresh.push_back(streams, s);
        self.classes[c].listed += 1;
        self.add_queued(c, len);
    }

    /// Stream `s` (unlisted, of class `c`, quantum `q`) left in debt: its last packet
    /// was larger than the credit it had. Whether it still owes after the rounds gone
    /// by since its place in the round came up (one turn's credit, at the class's
    /// present boost, repaid per round, as if it had stayed; the rounds counted in
    /// removals from the round's head at the class's present size). If so its credit
    /// becomes what it still owes, and it must rejoin at the round's tail, not fresh:
    /// otherwise a stream whose packets exceed its quantum and that empties after each
    /// would be served at once on every return and never pay (found by a red-team
    /// review: a weight-1 P7 stream of 9,000-byte packets took 51x its share). A debt
    /// is forgiven in full once the rounds that would have repaid it have gone by, or
    /// when the class has nothing queued (a new busy period, where virtual time would
    /// have moved past it), or when the stream has no mark (it was moved by a control
    /// action, whose credit is forgotten).
    #[cold]
    #[inline(never)]
    fn still_owes(&mut self, streams: &mut [Stream], s: u32, c: usize, q: i32) -> bool {
        let st = &mut streams[s as usize];
        let class = &self.classes[c];
        let mark = st.linger();
        if class.queued == 0 || mark == 0 {
            return false;
        }
        // deficit < 0 and q >= 1, both within i32; a turn's credit below 2^54.
        let owed = u64::from(st.deficit.unsigned_abs());
        let turn = u64::from(q.max(1).unsigned_abs()) << class.boost;
        let rounds = owed.div_ceil(turn);
        // `pops` has reached the mark (it no longer lingers): one round has gone by.
        let gone = 1 + (class.pops - mark) / u64::from(class.listed.max(1));
        if gone >= rounds {
            return false;
        }
        // gone * turn < owed <= 2^31, so the difference lies in [-2^31, 0).
        st.deficit = (gone as i64 * turn as i64 - owed as i64) as i32;
        true
    }

    /// Links an unlisted stream (with whatever it holds) at the tail of its class's
    /// round, keeping its credit but at most one quantum: for a stream moved by a
    /// control action, which must not gain a fresh quantum ahead of the round.
    pub(crate) fn relink(&mut self, streams: &mut [Stream], s: u32) {
        let c = self.class_of(&streams[s as usize]);
        self.relink_into(streams, s, c);
    }

    /// [`Wfq::relink`] into class `c`, the stream's class.
    #[inline(always)]
    fn relink_into(&mut self, streams: &mut [Stream], s: u32, c: usize) {
        let q = self.quantum_of(c, streams[s as usize].weight);
        let st = &mut streams[s as usize];
        debug_assert!(!st.has(Flags::LISTED), "stream linked twice");
        st.deficit = st.deficit.min(q);
        st.set(Flags::LISTED);
        let len = u64::from(st.len);
        self.round_push(streams, c, s);
        self.classes[c].listed += 1;
        self.add_queued(c, len);
    }

    /// Unlinks a listed stream from its class, taking its queued packets out of the
    /// class's count. Its credit is forgotten (it rejoins with one quantum).
    pub(crate) fn unlink(&mut self, streams: &mut [Stream], s: u32) {
        let c = self.class_of(&streams[s as usize]);
        self.unlink_from(streams, c, s);
    }

    /// [`Wfq::unlink`] from class `c`, the stream's class.
    #[inline(always)]
    fn unlink_from(&mut self, streams: &mut [Stream], c: usize, s: u32) {
        let st = &streams[s as usize];
        debug_assert!(st.has(Flags::LISTED), "unlink of an unlisted stream");
        let len = u64::from(st.len);
        if self.cursor == s {
            // The cursor is the stream checked last: step it back so the walk resumes
            // with the stream that followed `s`.
            self.cursor = if st.prev != NIL {
                st.prev
            } else if !st.has(Flags::FRESH) && c == self.low {
                self.classes[self.low].fresh.tail
            } else {
                NIL
            };
        }
        let class = &mut self.classes[c];
        class.listed -= 1;
        if st.has(Flags::FRESH) {
            class.fresh.unlink(streams, s);
        } else {
            class.round.unlink(streams, s);
            class.pops += 1;
        }
        let st = &mut streams[s as usize];
        st.clear(Flags::LISTED);
        st.clear(Flags::FRESH);
        self.sub_queued(c, len);
    }

    /// [`Wfq::unlink`] of `s`, the head of class `c`'s round, with an empty queue (so the
    /// class's packet count does not change).
    #[inline(always)]
    fn leave_round(&mut self, streams: &mut [Stream], c: usize, s: u32) {
        debug_assert!(streams[s as usize].prev == NIL && self.classes[c].round.head == s);
        debug_assert!(streams[s as usize].len == 0 && !streams[s as usize].has(Flags::FRESH));
        if self.cursor == s {
            // As in `unlink`: the walk resumes with the stream that followed `s`.
            self.cursor = if c == self.low {
                self.classes[self.low].fresh.tail
            } else {
                NIL
            };
        }
        let class = &mut self.classes[c];
        class.listed -= 1;
        class.round.pop_front(streams);
        class.pops += 1;
        streams[s as usize].clear(Flags::LISTED);
    }

    /// Pushes unlisted-to-the-round stream `s` to the tail of class `c`'s round.
    #[inline(always)]
    fn round_push(&mut self, streams: &mut [Stream], c: usize, s: u32) {
        let class = &mut self.classes[c];
        class.round.push_back(streams, s);
        class.pushes += 1;
    }

    /// Moves the head of class `c`'s round to its tail (a DRR rotation; counted even
    /// when the round holds one stream, which then passes any lingering mark behind it).
    #[inline(always)]
    fn round_rotate(&mut self, streams: &mut [Stream], c: usize) {
        let class = &mut self.classes[c];
        class.round.rotate(streams);
        class.pops += 1;
        class.pushes += 1;
    }

    /// Stream `s` of class `c` emptied at the head of its fresh list, or at the round's
    /// head as its credit ran out: it leaves the lists now and lingers only as a mark
    /// (see the module docs).
    #[inline(always)]
    fn retire(&mut self, streams: &mut [Stream], c: usize, s: u32) {
        debug_assert!(streams[s as usize].len == 0);
        self.unlink_from(streams, c, s);
        streams[s as usize].set_linger(self.classes[c].pushes);
    }

    /// The backlogged class with the earliest start tag and the stream it serves next,
    /// dropping an empty stream it meets at the head of the round.
    #[inline]
    pub(crate) fn pick(&mut self, streams: &mut [Stream]) -> Option<(usize, u32)> {
        if self.active == 0 {
            return None;
        }
        let mut bits = self.active;
        let mut c = bits.trailing_zeros() as usize & 15;
        let mut best = self.tags[c];
        bits &= bits - 1;
        while bits != 0 {
            let o = bits.trailing_zeros() as usize & 15;
            bits &= bits - 1;
            let tag = self.tags[o];
            if before(tag, best) {
                (c, best) = (o, tag);
            }
        }
        Some((c, self.head_of(streams, c)))
    }

    /// The stream class `c` (backlogged) serves next.
    #[inline]
    fn head_of(&mut self, streams: &mut [Stream], c: usize) -> u32 {
        let fresh = self.classes[c].fresh.head;
        if fresh != NIL {
            return fresh;
        }
        // Indebted streams rotated in this decision.
        let mut rotations = 0;
        loop {
            let s = self.classes[c].round.head;
            debug_assert!(s != NIL, "a backlogged class has a listed stream");
            let st = &streams[s as usize];
            if st.len == 0 {
                // Emptied during its turn with credit left: it leaves the round now.
                prefetch(streams.as_ptr().wrapping_add(st.next as usize));
                self.leave_round(streams, c, s);
                continue;
            }
            // With credit left the stream's turn goes on. Spent, the round has reached
            // it for a new turn: add its quantum, exactly once per visit (as DRR does
            // when the round reaches a stream), and serve it now if that covers its
            // debt; otherwise (a quantum below the packet it owes for) it sits this
            // round out. Which of the two a decision meets is as random as the
            // traffic, so both take the same branch-free path.
            let (deficit, w) = (st.deficit, st.weight);
            let new_turn = deficit <= 0;
            let mut deficit = deficit.saturating_add(self.top_up(c, w, new_turn));
            // Under pressure, or while the boost's books are kept (cold).
            if self.classes[c].tracked | (rotations >= ROTATIONS_BEFORE_BOOST / 2) {
                deficit = self.settle_boost(c, w, deficit, new_turn, rotations);
            }
            streams[s as usize].deficit = deficit;
            if deficit > 0 {
                return s;
            }
            self.round_rotate(streams, c);
            rotations += 1;
            if rotations % ROTATIONS_BEFORE_BOOST == 0 {
                self.boost(c);
            }
        }
    }

    /// The boost's books, at a visit of the stream at the head of class `c`'s round
    /// (weight `w`, `deficit` after this visit's top-up), after `rotated` indebted
    /// streams in the same decision; returns the deficit corrected as below.
    ///
    /// `ROTATIONS_BEFORE_BOOST / 2` rotations in one decision are pressure (so is a
    /// rise). At a new turn while the books are kept: first, if the round is over
    /// (every stream in it when it began has been visited), the next one begins, one
    /// step lower if a fall is due, this visit's credit taken down with it; the
    /// round's rises become the last round's. Then the stream is owed what the last
    /// round's rises after its visit there gave the streams visited after them: its
    /// quantum times `2^end - 2^then` (see [`Rises`]). Last, when the decision ends
    /// here (the stream has credit) in a round that began after the last pressure, a
    /// fall becomes due: a whole round has gone by without pressure. Pressure cancels
    /// a due fall. Falls are decided at a decision's end, when its rotations are
    /// known, so a decision lowers the boost once at most and never undoes the rises
    /// it needs; and the boost changes only at a round's end or by a rise, so every
    /// stream that stays in the round gets, round after round, its quantum doubled by
    /// the boost at the round's end, whatever its place in the round.
    ///
    /// Approximations, each bounded by one round's payment to one stream: a stream
    /// unlinked from the middle of the round (a control action) counts as a removal,
    /// so the streams ahead of it reach the head one count early; the payment for a
    /// rise at that count lands on a neighbour, and if the unlinked stream had been
    /// visited in this round already, the round's last stream is taken for the next
    /// round's first (it is paid for this round's rises, which its top-up already had,
    /// instead of the last round's). A stream pushed to the tail other than by its own
    /// visit (from the fresh list, relinked while lingering, or moved) is paid by its
    /// place there as if it had been visited at that moment.
    #[cold]
    #[inline(never)]
    fn settle_boost(
        &mut self,
        c: usize,
        w: u16,
        mut deficit: i32,
        new_turn: bool,
        rotated: u32,
    ) -> i32 {
        let class = &mut self.classes[c];
        if rotated >= ROTATIONS_BEFORE_BOOST / 2 {
            class.pressed_at = class.pops;
            class.due = false;
        }
        if class.tracked && new_turn {
            deficit = self.round_books(c, w, deficit);
        }
        // The decision ends here with this stream: a fall becomes due once a whole
        // round has gone by without pressure.
        let class = &mut self.classes[c];
        if deficit > 0 && class.boost != 0 && class.pressed_at < class.round_start {
            class.due = true;
        }
        deficit
    }

    /// [`Wfq::settle_boost`] at a new turn while the books are kept: the round's end,
    /// and what the stream is owed.
    fn round_books(&mut self, c: usize, w: u16, mut deficit: i32) -> i32 {
        let class = &mut self.classes[c];
        let j = class.pops;
        if j >= class.round_end {
            // A rise cancels a due fall, so the round had none and `boost >= 1`.
            let rose = self.this_round[c].n != 0;
            if class.due {
                debug_assert!(
                    class.boost != 0 && !rose,
                    "a fall is due only while boosted"
                );
                class.due = false;
                class.boost -= 1;
                let b = class.boost;
                let (high, low) = (self.credit(c, w, b + 1), self.credit(c, w, b));
                deficit = deficit.saturating_sub(high - low);
            }
            let class = &mut self.classes[c];
            class.calm = if class.boost == 0 && !rose {
                class.calm.saturating_add(1)
            } else {
                0
            };
            (class.round_start, class.round_end) = (j, class.pushes);
            self.last_round[c] = self.this_round[c];
            self.this_round[c] = Rises {
                from: class.boost,
                ..Rises::NONE
            };
            if class.calm >= CALM_ROUNDS {
                class.tracked = false;
            }
        }
        let last = &self.last_round[c];
        let n = last.n as usize;
        let before = last.at[..n].iter().take_while(|&&at| at <= j).count();
        if before < n {
            let (then, end) = (last.from + before as u32, last.from + last.n);
            // Both credits rounded with one fresh dither step, so the difference is
            // exact on average (truncated, one owed 12.5 bytes a round lost 4%).
            let class = &mut self.classes[c];
            class.dither = class.dither.wrapping_add(DITHER_STEP);
            let owed = self.credit(c, w, end) - self.credit(c, w, then);
            deficit = deficit.saturating_add(owed);
        }
        deficit
    }

    /// Doubles every quantum of class `c` (see [`Class::boost`]), noting the rise in the
    /// round's books, which start here (with a round that ends once every stream now in
    /// the round has been visited) if they were not kept. Out of line: it happens only
    /// while quanta are below the packets queued.
    #[cold]
    #[inline(never)]
    fn boost(&mut self, c: usize) {
        let class = &mut self.classes[c];
        if !class.tracked {
            class.tracked = true;
            class.calm = 0;
            (class.round_start, class.round_end) = (class.pops, class.pushes);
            self.this_round[c] = Rises {
                from: class.boost,
                ..Rises::NONE
            };
            self.last_round[c] = Rises::NONE;
        }
        (class.pressed_at, class.due) = (class.pops, false);
        if class.boost < MAX_BOOST {
            let rises = &mut self.this_round[c];
            debug_assert_eq!(
                rises.from + rises.n,
                class.boost,
                "the books match the boost"
            );
            rises.at[rises.n as usize] = class.pushes;
            rises.n += 1;
            class.boost += 1;
        }
    }

    /// Accounts a packet of `len` bytes just taken from stream `s` of class `c`.
    #[inline]
    pub(crate) fn served(&mut self, streams: &mut [Stream], c: usize, s: u32, len: u32) {
        self.charge(c, len);
        self.sub_queued(c, 1);
        let st = &mut streams[s as usize];
        st.deficit = st.deficit.saturating_sub(len as i32);
        let (spent, empty) = (st.deficit <= 0, st.len == 0);
        if spent && !empty {
            st.saturated_turn();
        }
        // A spent stream keeps its debt: its next visit at the round's head adds the
        // quantum (see `head_of`).
        if st.has(Flags::FRESH) {
            if empty {
                // Out of the fresh list, lingering behind the round's tail.
                self.retire(streams, c, s);
            } else if spent {
                // Out of the fresh list: to the round's tail.
                st.clear(Flags::FRESH);
                self.classes[c].fresh.unlink(streams, s);
                self.round_push(streams, c, s);
            }
        } else if spent {
            if empty {
                // Its turn is over: lingering behind the round's tail.
                self.retire(streams, c, s);
            } else {
                self.round_rotate(streams, c);
            }
        }
    }

    /// Accounts a packet dropped from the head of listed stream `s` of class `c` (no
    /// service is charged). A fresh stream left empty lingers behind the round's tail.
    pub(crate) fn dropped(&mut self, streams: &mut [Stream], c: usize, s: u32) {
        self.sub_queued(c, 1);
        let st = &mut streams[s as usize];
        if st.len == 0 && st.has(Flags::FRESH) {
            self.retire(streams, c, s);
        }
    }

    /// SFQ accounting of `len` bytes served by class `c`.
    #[inline(always)]
    fn charge(&mut self, c: usize, len: u32) {
        let inv = if c == LANE && self.active & (1 << self.low) == 0 {
            self.lane_inv_alone
        } else {
            self.classes[c].inv
        };
        let tag = &mut self.tags[c & 15];
        let before_v = self.vtime;
        self.vtime = *tag;
        *tag = tag.wrapping_add(cost(len, inv));
        if (before_v ^ self.vtime) >> REFRESH_BIT != 0 {
            self.refresh_idle();
        }
    }

    /// Moves every idle class whose tag fell behind the virtual time up to it, so no
    /// idle tag can drift 2^63 away and be misread after a wrap (see the module docs).
    #[cold]
    fn refresh_idle(&mut self) {
        for (c, tag) in self.tags.iter_mut().take(CLASSES).enumerate() {
            if self.active & (1 << c) == 0 && before(*tag, self.vtime) {
                *tag = self.vtime;
            }
        }
    }

    // ----- aging cursor over the lowest tier -----------------------------------------

    /// Streams listed in the lowest tier.
    pub(crate) fn low_listed(&self) -> u32 {
        self.classes[self.low].listed
    }

    /// The listed stream of the lowest tier the aging guard looks at now, moving the
    /// cursor on to the next one. Walks the fresh list, then the round, then starts
    /// over: every stream listed in the lowest tier is visited within one pass.
    pub(crate) fn cursor_step(&mut self, streams: &[Stream]) -> u32 {
        let low = &self.classes[self.low];
        if low.queued == 0 {
            return NIL;
        }
        let first = if low.fresh.head != NIL {
            low.fresh.head
        } else {
            low.round.head
        };
        // Advance lazily from the stream checked last, so streams the round rotated
        // in the meantime are not skipped.
        let mut s = if self.cursor == NIL {
            NIL
        } else {
            self.after(streams, self.cursor)
        };
        if s == NIL {
            s = first;
        }
        self.cursor = s;
        s
    }

    /// The stream after `s` in the cursor's walk of the lowest tier.
    fn after(&self, streams: &[Stream], s: u32) -> u32 {
        let st = &streams[s as usize];
        if st.next != NIL {
            return st.next;
        }
        if st.has(Flags::FRESH) && self.class_of(st) == self.low {
            return self.classes[self.low].round.head;
        }
        NIL
    }

    /// Start tag of class `c` (tests).
    #[cfg(test)]
    fn tag(&self, c: usize) -> u64 {
        self.tags[c]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize, prio: u8) -> Vec<Stream> {
        (0..n)
            .map(|_| Stream::opened(1, prio, 1 << prio, false, super::super::stream::NIL16))
            .collect()
    }

    fn default_wfq(streams: &mut [Stream]) -> Wfq {
        let mut w = Wfq::new();
        // High {6,7} 25, Medium {2..5} 60, Low {0,1} 15.
        w.configure(streams, [2, 2, 1, 1, 1, 1, 0, 0], &[25, 60, 15], 1500);
        w
    }

    #[test]
    fn s3_quantum_is_proportional_to_weight_from_the_tier_base() {
        let mut streams = table(1, 2);
        let w = default_wfq(&mut streams);
        assert_eq!(w.quantum_of(1, 4), 1500, "P2 is Medium's base weight");
        assert_eq!(w.quantum_of(1, 32), 12_000, "P5 = 8x P2");
        assert_eq!(w.quantum_of(0, 128), 3000, "P7 = 2x P6");
        assert_eq!(w.quantum_of(1, 1), 375, "an override below the base");
    }

    /// S13: 4096 streams of weight 1 in High (base weight 2^6: a 23-byte quantum) all
    /// sending 9000-byte packets. Once served, every stream is thousands of bytes in
    /// debt, and finding one with credit took one rotation per stream per 23 bytes: up to
    /// ~1.6 million rotations in one decision. With the class's quanta doubling after
    /// a few indebted rotations, no decision makes more than a constant number, and the
    /// equal streams are still served in turn.
    #[test]
    fn s13_a_decision_rotates_a_bounded_number_of_indebted_streams() {
        // Lone streams and short rounds (where a decision can lower the boost) as well
        // as a long one.
        let bound = u64::from(ROTATIONS_BEFORE_BOOST * MAX_BOOST);
        for n in [4096, 1, 2, 3] {
            let mut streams: Vec<Stream> = (0..n)
                .map(|_| Stream::opened(1, 7, 1, true, super::super::stream::NIL16))
                .collect();
            let mut w = default_wfq(&mut streams);
            assert_eq!(w.quantum_of(0, 1), 23, "1500 * 1 / 2^6, rounded down");
            for s in 0..n as u32 {
                streams[s as usize].len = 8;
                w.link(&mut streams, s);
            }
            let (mut worst, mut served) = (0, vec![0u32; n]);
            let decisions = 4 * n.max(1000);
            for _ in 0..decisions {
                let before = w.classes[0].pops;
                let (c, s) = w.pick(&mut streams).expect("backlogged");
                worst = worst.max(w.classes[0].pops - before);
                served[s as usize] += 1;
                streams[s as usize].len -= 1;
                w.served(&mut streams, c, s, 9000);
                streams[s as usize].len += 1;
                w.packet_added(&mut streams, s);
            }
            assert!(
                worst <= bound,
                "{n} streams: {worst} rotations in one decision (bound {bound})"
            );
            let rounds = (decisions / n) as u32;
            let (lo, hi) = (served.iter().min(), served.iter().max());
            assert!(
                lo >= Some(&(rounds - 1)) && hi <= Some(&(rounds + 1)),
                "{n} equal streams served {lo:?}..{hi:?} times in {rounds} rounds"
            );
        }
    }

    #[test]
    fn s3_idle_tags_are_refreshed_when_virtual_time_crosses_2_pow_61() {
        let mut streams = table(2, 4);
        let mut w = default_wfq(&mut streams);
        // Medium alone, its tag near a refresh boundary; High idle with a stale tag.
        w.tags[1] = (1u64 << 61) - 10;
        w.vtime = (1u64 << 61) - 10;
        w.tags[0] = 5;
        streams[0].len = 1;
        w.link(&mut streams, 0);
        let (c, s) = w.pick(&mut streams).expect("backlogged");
        assert_eq!((c, s), (1, 0));
        streams[0].len = 0;
        w.served(&mut streams, c, s, 1500);
        streams[0].len = 1;
        w.packet_added(&mut streams, 0);
        let (c, s) = w.pick(&mut streams).expect("backlogged");
        w.served(&mut streams, c, s, 1500);
        assert!(w.vtime >= 1 << 61);
        assert_eq!(w.tag(0), w.vtime, "the idle tier's stale tag was moved up");
    }
}
