//! Stream slots: one 64-byte record per stream, in a table reserved at construction.

use super::pool::{Fifo, NIL};
use super::priority::Priority;

/// Handle of an open stream: a slot index and the slot's generation, so a handle that
/// outlived its stream is refused rather than aliased onto the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    index: u32,
    generation: u32,
}

impl StreamId {
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        Self { index, generation }
    }
    /// Slot index (dense, `0..max_streams`): handy for the embedder's own side tables.
    pub fn index(self) -> u32 {
        self.index
    }
    /// Generation of the slot when this handle was issued (24 bits; a slot is retired
    /// rather than reused once its generation is exhausted, so handles never alias).
    pub fn generation(self) -> u32 {
        self.generation
    }
    /// Packs the handle into a `u64` (for rings, logs and metric labels).
    pub fn to_raw(self) -> u64 {
        u64::from(self.index) | (u64::from(self.generation) << 32)
    }
    /// Inverse of [`StreamId::to_raw`] (every `u64` decodes; an unknown handle is
    /// refused by the scheduler, not here).
    pub fn from_raw(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// A per-stream rate cap (S6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateCap {
    /// Sustained rate in bits per second (> 0).
    pub rate_bps: u64,
    /// Bucket depth in bytes (at most 2^30); `None` uses the policy's burst multiplier
    /// times 10 ms of traffic at `rate_bps`. Either way never less than one maximal
    /// packet of the policy in force: a smaller depth is raised to it, and follows a
    /// policy that changes `max_packet_bytes`.
    pub burst_bytes: Option<u64>,
}

/// How to open (or update) a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamConfig {
    /// Selects the tier and, by default, the weight `2^priority`.
    pub priority: Priority,
    /// Weight override (1..=65535) for WFQ inside the tier; `None` is `2^priority`.
    pub weight: Option<u16>,
    /// Optional rate cap.
    pub cap: Option<RateCap>,
}

impl StreamConfig {
    /// A stream at `priority` (0..=7; larger values are clamped to 7) with the default
    /// weight and no cap. Use [`Priority::new`] to reject bad values instead.
    pub fn with_priority(priority: u8) -> Self {
        Self {
            priority: Priority::saturating(priority),
            ..Self::default()
        }
    }

    /// Checks what `open` and `update` would refuse in the configuration itself (not
    /// the table's room): a weight of 0, a cap of 0 bit/s, a cap burst above 2^30
    /// bytes. The error names the field.
    pub fn check(&self) -> Result<(), super::StreamError> {
        if self.weight == Some(0) {
            return Err(super::StreamError::Weight);
        }
        if let Some(cap) = self.cap {
            if cap.rate_bps == 0 {
                return Err(super::StreamError::Cap {
                    field: "rate_bps",
                    value: 0,
                    expected: "> 0",
                });
            }
            if let Some(b) = cap.burst_bytes
                && b > super::policy::MAX_BURST_BYTES
            {
                // A burst below one maximal packet is raised to it (`cap_burst`), under
                // this policy and any later one, so it is not an error.
                return Err(super::StreamError::Cap {
                    field: "burst_bytes",
                    value: b,
                    expected: "at most 2^30",
                });
            }
        }
        Ok(())
    }
}

/// Slot states (low two bits of the flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Not in use (on the free list, or retired).
    Free = 0,
    /// Open: accepts packets.
    Open = 1,
    /// Disconnected for ignoring backpressure (S8): refuses packets until reopened.
    Disconnected = 2,
}

/// The flag bits of a stream slot (above the two state bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    const STATE_MASK: u8 = 0b11;
    /// Linked into a service list (possibly at the head of the round with an empty
    /// queue, until the next decision there).
    pub(crate) const LISTED: Flags = Flags(1 << 2);
    /// Waiting for cap tokens on the timing wheel (S6).
    pub(crate) const THROTTLED: Flags = Flags(1 << 3);
    /// WARNING raised and not yet cleared (S7).
    pub(crate) const WARNED: Flags = Flags(1 << 4);
    /// Served in the aging lane (S9).
    pub(crate) const PROMOTED: Flags = Flags(1 << 5);
    /// `weight` was set explicitly rather than derived from the priority.
    pub(crate) const WEIGHT_SET: Flags = Flags(1 << 6);
    /// In its tier's fresh list (rather than the DRR round).
    pub(crate) const FRESH: Flags = Flags(1 << 7);
}

/// Priority (3 bits) and CRITICAL strikes of the current episode (4 bits) in one byte.
const PRIO_MASK: u8 = 0b111;
const STRIKE_SHIFT: u8 = 3;
const STRIKE_MASK: u8 = 0b1111 << STRIKE_SHIFT;

/// The state of one stream: queue, list links, DRR credit, CoDel state, counters.
/// Exactly 64 bytes and aligned to them, one cache line (P2); rate-cap buckets live in a
/// side table so uncapped streams do not pay for them. Fields are private: transitions
/// go through the named methods.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub(crate) struct Stream {
    /// Queued descriptors, oldest first.
    pub(crate) fifo: Fifo,
    /// Packets queued (`0..=max_queue_depth`).
    pub(crate) len: u32,
    /// Service-list links (`NIL` at the ends); the free list of slots reuses `next`.
    pub(crate) prev: u32,
    pub(crate) next: u32,
    /// DRR credit in bytes while open; after a terminal event (disconnect, close) the
    /// number of packets that event dropped.
    pub(crate) deficit: i32,
    /// Slot generation (low 24 bits) and the count of consecutive saturated DRR turns
    /// (high 8 bits, see [`Stream::saturated_turns`]).
    gen_turns: u32,
    /// CoDel: see `codel::Codel` (time in 1.024 us units, and count with the dropping bit).
    pub(crate) codel_time: u32,
    /// Packets dropped by queue-delay control (`aqm`), saturating.
    pub(crate) aqm_dropped: u32,
    /// Packets dropped because they outlived the aging bound (`expired`), saturating.
    pub(crate) expired: u32,
    /// Effective WFQ weight (1..=65535).
    pub(crate) weight: u16,
    /// Index into the cap table, or `NIL16`.
    pub(crate) cap: u16,
    pub(crate) codel_count: u16,
    prio_strikes: u8,
    flags: u8,
    pub(crate) enqueued: u64,
    pub(crate) dequeued: u64,
}

/// Generations are 24-bit: a slot is retired once its generation reaches this.
pub(crate) const GENERATION_MASK: u32 = (1 << 24) - 1;
/// Saturated turns (see [`Stream::saturated_turns`]) after which a stream counts as
/// above its share for AQM. 64, not fewer: a Poisson stream at 90% of a share of two
/// packets a turn lives through long busy periods (an M/D/1 queue at that load waits
/// 4.5 service times on average), and 16 turns took 5-7% of its packets; more than 64
/// leaves a stream at twice its share unwatched after one halving (see
/// `docs/DECISIONS.md`, S14).
pub(crate) const OVER_SHARE_TURNS: u32 = 64;

/// The null cap index.
pub(crate) const NIL16: u16 = u16::MAX;

impl Stream {
    pub(crate) const VACANT: Stream = Stream {
        fifo: Fifo::EMPTY,
        len: 0,
        prev: NIL,
        next: NIL,
        deficit: 0,
        gen_turns: 0,
        codel_time: 0,
        aqm_dropped: 0,
        expired: 0,
        weight: 1,
        cap: NIL16,
        codel_count: 0,
        prio_strikes: 0,
        flags: SlotState::Free as u8,
        enqueued: 0,
        dequeued: 0,
    };

    /// A freshly opened stream in slot generation `generation`.
    pub(crate) fn opened(
        generation: u32,
        prio: u8,
        weight: u16,
        weight_set: bool,
        cap: u16,
    ) -> Self {
        debug_assert!(generation <= GENERATION_MASK, "generation out of range");
        let mut st = Stream {
            gen_turns: generation,
            weight,
            cap,
            prio_strikes: prio & PRIO_MASK,
            flags: SlotState::Open as u8,
            ..Stream::VACANT
        };
        if weight_set {
            st.set(Flags::WEIGHT_SET);
        }
        st
    }

    #[inline(always)]
    pub(crate) fn state(&self) -> SlotState {
        match self.flags & Flags::STATE_MASK {
            1 => SlotState::Open,
            2 => SlotState::Disconnected,
            _ => SlotState::Free,
        }
    }

    /// Moves the slot to `state`, keeping the other flags (cleared when freed).
    pub(crate) fn set_state(&mut self, state: SlotState) {
        debug_assert!(
            state != SlotState::Free || !self.has(Flags::LISTED),
            "a listed stream cannot be freed"
        );
        let keep = if state == SlotState::Free {
            0
        } else {
            self.flags & !Flags::STATE_MASK
        };
        self.flags = keep | state as u8;
    }

    #[inline(always)]
    pub(crate) fn has(&self, flag: Flags) -> bool {
        self.flags & flag.0 != 0
    }

    #[inline(always)]
    pub(crate) fn set(&mut self, flag: Flags) {
        self.flags |= flag.0;
    }

    #[inline(always)]
    pub(crate) fn clear(&mut self, flag: Flags) {
        self.flags &= !flag.0;
    }

    /// The stream's priority (0..=7).
    #[inline(always)]
    pub(crate) fn prio(&self) -> u8 {
        self.prio_strikes & PRIO_MASK
    }

    pub(crate) fn set_prio(&mut self, prio: u8) {
        self.prio_strikes = (self.prio_strikes & !PRIO_MASK) | (prio & PRIO_MASK);
    }

    /// CRITICALs raised in the current backpressure episode (0..=15).
    #[inline(always)]
    pub(crate) fn strikes(&self) -> u8 {
        (self.prio_strikes & STRIKE_MASK) >> STRIKE_SHIFT
    }

    /// One more CRITICAL (saturating at 15, the largest `critical_strikes`).
    pub(crate) fn strike(&mut self) {
        let s = (self.strikes() + 1).min(15);
        self.prio_strikes = (self.prio_strikes & !STRIKE_MASK) | (s << STRIKE_SHIFT);
    }

    pub(crate) fn forgive(&mut self) {
        self.prio_strikes &= !STRIKE_MASK;
    }

    /// The slot's generation (24 bits).
    #[inline(always)]
    pub(crate) fn generation(&self) -> u32 {
        self.gen_turns & GENERATION_MASK
    }

    /// DRR turns (saturating at 255) that ended with the stream's credit spent and
    /// packets left, halved each time its queue empties, and lifted to
    /// `OVER_SHARE_TURNS` by a flood's onset. A stream within its share empties its
    /// queue between bursts; one above its share never does.
    #[inline(always)]
    pub(crate) fn saturated_turns(&self) -> u32 {
        self.gen_turns >> 24
    }

    /// One more saturated turn.
    #[inline(always)]
    pub(crate) fn saturated_turn(&mut self) {
        if self.saturated_turns() < 255 {
            self.gen_turns += 1 << 24;
        }
    }

    /// `true` during a backpressure episode (WARNING raised or CRITICALs struck).
    #[inline(always)]
    pub(crate) fn in_episode(&self) -> bool {
        self.has(Flags::WARNED) || self.prio_strikes & STRIKE_MASK != 0
    }

    /// `true` while the stream looks above its fair share: its count of saturated
    /// turns (see [`Stream::saturated_turns`]) is at least `OVER_SHARE_TURNS`. Only such
    /// streams, and floods, are subject to AQM (S14: a stream within its share should
    /// see no AQM drop, even a bursty one whose queue lives through many turns).
    #[inline(always)]
    pub(crate) fn over_share(&self) -> bool {
        self.saturated_turns() >= OVER_SHARE_TURNS
    }

    /// A flood's onset (more than `FLOOD_QUANTA` turns queued): counts as above its
    /// share from now on, until its queue empties, so AQM goes on watching it below
    /// that backlog (one emptying halves the count below the threshold again).
    #[inline(always)]
    pub(crate) fn mark_over_share(&mut self) {
        self.set_saturated_turns(self.saturated_turns().max(OVER_SHARE_TURNS));
    }

    /// Its queue emptied: halve the count of saturated turns (a stream that keeps
    /// emptying its queue falls below the threshold in a few turns; one whose queue AQM
    /// drained now and then stays above it).
    #[inline(always)]
    pub(crate) fn end_saturation(&mut self) {
        self.set_saturated_turns(self.saturated_turns() >> 1);
    }

    /// Stores the count of saturated turns (<= 255) beside the generation.
    #[inline(always)]
    fn set_saturated_turns(&mut self, turns: u32) {
        debug_assert!(turns <= 255, "saturated turns are 8 bits");
        self.gen_turns = (self.gen_turns & GENERATION_MASK) | (turns << 24);
    }

    /// Marks an unlisted stream as lingering: it would stand in its class's round behind
    /// the first `pushes` entries ever pushed there (see `wfq`). Kept in the list links,
    /// which an unlisted stream does not use; linking it overwrites the mark.
    #[inline(always)]
    pub(crate) fn set_linger(&mut self, pushes: u64) {
        debug_assert!(!self.has(Flags::LISTED), "a listed stream uses its links");
        let mark = !pushes;
        (self.prev, self.next) = (mark as u32, (mark >> 32) as u32);
    }

    /// Forgets a lingering mark (the stream moved to another class, whose counts the
    /// mark does not refer to).
    pub(crate) fn clear_linger(&mut self) {
        debug_assert!(
            !self.has(Flags::LISTED) && !self.has(Flags::THROTTLED),
            "a listed or parked stream uses its links"
        );
        (self.prev, self.next) = (super::pool::NIL, super::pool::NIL);
    }

    /// The mark of [`Stream::set_linger`], or 0 (lingering nowhere) for a stream whose
    /// links are unset (`NIL`, as a fresh slot's or an unlinked stream's are).
    #[inline(always)]
    pub(crate) fn linger(&self) -> u64 {
        !(u64::from(self.prev) | (u64::from(self.next) << 32))
    }

    /// Tail drops (`queue_full`), derived from the other counters (S11); `terminal` is
    /// what a disconnect or close dropped (0 while open).
    pub(crate) fn dropped_queue_full(&self, terminal: u64) -> u64 {
        self.enqueued
            - self.dequeued
            - u64::from(self.len)
            - u64::from(self.aqm_dropped)
            - u64::from(self.expired)
            - terminal
    }

    /// Packets dropped by the terminal event (disconnect or close).
    pub(crate) fn terminal(&self) -> u64 {
        u64::from(self.deficit as u32)
    }
}

/// An intrusive doubly-linked list of streams threaded through their `prev`/`next`:
/// the one list helper of the scheduler (service lists and the timing wheel's slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct List {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl List {
    pub(crate) const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    /// Appends `s`.
    #[inline]
    pub(crate) fn push_back(&mut self, streams: &mut [Stream], s: u32) {
        streams[s as usize].next = NIL;
        streams[s as usize].prev = self.tail;
        if self.tail == NIL {
            self.head = s;
        } else {
            streams[self.tail as usize].next = s;
        }
        self.tail = s;
    }

    /// Unlinks `s`, which must be in this list.
    #[inline]
    pub(crate) fn unlink(&mut self, streams: &mut [Stream], s: u32) {
        let (prev, next) = (streams[s as usize].prev, streams[s as usize].next);
        if prev == NIL {
            debug_assert_eq!(self.head, s, "unlink of a stream not in this list");
            self.head = next;
        } else {
            streams[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            streams[next as usize].prev = prev;
        }
        streams[s as usize].prev = NIL;
        streams[s as usize].next = NIL;
    }

    /// Unlinks the head (the list must not be empty).
    #[inline(always)]
    pub(crate) fn pop_front(&mut self, streams: &mut [Stream]) {
        let s = self.head;
        let next = streams[s as usize].next;
        streams[s as usize].next = NIL;
        self.head = next;
        if next == NIL {
            self.tail = NIL;
        } else {
            streams[next as usize].prev = NIL;
        }
    }

    /// Moves the head to the tail (a DRR rotation).
    #[inline]
    pub(crate) fn rotate(&mut self, streams: &mut [Stream]) {
        let s = self.head;
        if s == NIL || self.tail == s {
            return;
        }
        self.unlink(streams, s);
        self.push_back(streams, s);
    }
}

/// Counters of one stream (S11: `enqueued == dequeued + dropped_* + queued`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets accepted or tail-dropped (refused ones are not counted here).
    pub enqueued: u64,
    /// Packets handed to the egress.
    pub dequeued: u64,
    /// Tail drops because the queue was full.
    pub dropped_queue_full: u64,
    /// Drops by queue-delay control (S14), saturating at `u32::MAX`.
    pub dropped_aqm: u64,
    /// Drops of lowest-tier packets that outlived the aging bound (S9), saturating at
    /// `u32::MAX`.
    pub dropped_expired: u64,
    /// Packets dropped by disconnection (S8).
    pub dropped_disconnected: u64,
    /// Packets dropped because the stream was closed with a queue.
    pub dropped_closed: u64,
    /// Packets queued now.
    pub queued: u64,
    /// The stream's priority.
    pub priority: Priority,
    /// `true` while it is served in the aging lane (S9).
    pub promoted: bool,
    /// `true` once disconnected (S8) until reopened.
    pub disconnected: bool,
}

impl StreamStats {
    /// Counters of `s`; `closing` when taken just before the slot is freed (its
    /// terminal drops are then `closed` ones).
    pub(crate) fn of(s: &Stream, closing: bool) -> Self {
        let terminal = if closing || s.state() == SlotState::Disconnected {
            s.terminal()
        } else {
            0
        };
        Self {
            enqueued: s.enqueued,
            dequeued: s.dequeued,
            dropped_queue_full: s.dropped_queue_full(terminal),
            dropped_aqm: u64::from(s.aqm_dropped),
            dropped_expired: u64::from(s.expired),
            dropped_disconnected: if closing { 0 } else { terminal },
            dropped_closed: if closing { terminal } else { 0 },
            queued: u64::from(s.len),
            priority: Priority::saturating(s.prio()),
            promoted: s.has(Flags::PROMOTED),
            disconnected: s.state() == SlotState::Disconnected,
        }
    }

    /// Packets dropped after acceptance, every reason together.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_aqm
            + self.dropped_expired
            + self.dropped_disconnected
            + self.dropped_closed
    }

    /// `true` when the S11 conservation identity holds for these counters.
    pub fn is_conserved(&self) -> bool {
        self.enqueued == self.dequeued + self.dropped() + self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_stream_slot_is_one_cache_line_and_descriptor_fits_32_bytes() {
        assert_eq!(std::mem::size_of::<Stream>(), 64);
        // Aligned, so a slot never straddles two lines (a random slot would then cost
        // two misses, and a prefetch brings in only one of them).
        assert_eq!(std::mem::align_of::<Stream>(), 64);
        let table: Vec<Stream> = Vec::with_capacity(1000);
        assert_eq!(table.as_ptr() as usize % 64, 0);
        assert_eq!(crate::sched::Scheduler::<u64>::descriptor_bytes(), 32);
        assert_eq!(crate::sched::Scheduler::<u32>::descriptor_bytes(), 24);
    }

    #[test]
    fn stream_id_raw_round_trips() {
        let id = StreamId::new(123_456, 789);
        assert_eq!(StreamId::from_raw(id.to_raw()), id);
        let wide = StreamId::new(7, u32::MAX - 1);
        assert_eq!(StreamId::from_raw(wide.to_raw()), wide);
    }
}
