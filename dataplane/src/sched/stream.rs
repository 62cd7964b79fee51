//! Stream slots: one 64-byte record per stream, in a table reserved at construction.

use super::pool::{Fifo, NIL};

/// Handle of an open stream: a slot index and the slot's generation, so a handle that
/// outlived its stream is refused rather than aliased onto the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    index: u32,
    generation: u16,
}

impl StreamId {
    pub(crate) fn new(index: u32, generation: u16) -> Self {
        Self { index, generation }
    }
    /// Slot index (dense, `0..max_streams`): handy for the embedder's own side tables.
    pub fn index(self) -> u32 {
        self.index
    }
    /// Generation of the slot when this handle was issued.
    pub fn generation(self) -> u16 {
        self.generation
    }
    /// Packs the handle into a `u64` (for rings, logs and metric labels).
    pub fn to_raw(self) -> u64 {
        u64::from(self.index) | (u64::from(self.generation) << 32)
    }
    /// Inverse of [`StreamId::to_raw`]; `None` if the value has bits no handle has.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw >> 48 == 0).then_some(Self {
            index: raw as u32,
            generation: (raw >> 32) as u16,
        })
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
    /// Bucket depth in bytes; `None` uses the policy's burst multiplier times 10 ms of
    /// traffic at `rate_bps` (never less than one maximal packet).
    pub burst_bytes: Option<u64>,
}

/// How to open (or update) a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamConfig {
    /// Priority 0..=7: selects the tier and, by default, the weight `2^priority`.
    pub priority: u8,
    /// Weight override (1..=65535) for WFQ inside the tier; `None` is `2^priority`.
    pub weight: Option<u16>,
    /// Optional rate cap.
    pub cap: Option<RateCap>,
}

impl StreamConfig {
    /// A stream at `priority` with the default weight and no cap.
    pub fn with_priority(priority: u8) -> Self {
        Self {
            priority,
            ..Self::default()
        }
    }
}

/// Slot states (low two bits of `flags`).
pub(crate) const FREE: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const DISCONNECTED: u8 = 2;
pub(crate) const STATE_MASK: u8 = 0b11;
/// In its group's active list.
pub(crate) const ACTIVE: u8 = 1 << 2;
/// Waiting for cap tokens, parked in the throttle heap.
pub(crate) const THROTTLED: u8 = 1 << 3;
/// WARNING raised and not yet cleared.
pub(crate) const WARNED: u8 = 1 << 4;
/// Served at the aging target priority.
pub(crate) const PROMOTED: u8 = 1 << 5;
/// `weight` was set explicitly rather than derived from the priority.
pub(crate) const WEIGHT_SET: u8 = 1 << 6;

/// The state of one stream: queue, list links, DRR deficit, counters. Exactly 64 bytes
/// (P2); rate-cap buckets live in a side table so uncapped streams do not pay for them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stream {
    pub(crate) fifo: Fifo,
    pub(crate) len: u32,
    /// Active-list links (the free list reuses `next`).
    pub(crate) prev: u32,
    pub(crate) next: u32,
    /// DRR credit in bytes; > 0 for every active stream except possibly its group head.
    pub(crate) deficit: i32,
    /// Index into the cap table, or `NIL`.
    pub(crate) cap: u32,
    /// Packets dropped by a terminal event (disconnect or close): at most one queue.
    pub(crate) terminal_dropped: u32,
    pub(crate) generation: u16,
    /// Effective WFQ weight (1..=65535).
    pub(crate) weight: u16,
    /// Priority served at (differs from `base` while promoted).
    pub(crate) prio: u8,
    /// The stream's own priority: counters and budgets are kept under it.
    pub(crate) base: u8,
    pub(crate) flags: u8,
    /// CRITICALs raised in the current backpressure episode.
    pub(crate) strikes: u8,
    pub(crate) enqueued: u64,
    pub(crate) dequeued: u64,
    /// Tail drops (`queue_full`).
    pub(crate) dropped: u64,
}

impl Stream {
    pub(crate) const VACANT: Stream = Stream {
        fifo: Fifo::EMPTY,
        len: 0,
        prev: NIL,
        next: NIL,
        deficit: 0,
        cap: NIL,
        terminal_dropped: 0,
        generation: 0,
        weight: 1,
        prio: 0,
        base: 0,
        flags: FREE,
        strikes: 0,
        enqueued: 0,
        dequeued: 0,
        dropped: 0,
    };

    #[inline(always)]
    pub(crate) fn state(&self) -> u8 {
        self.flags & STATE_MASK
    }

    #[inline(always)]
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
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
    /// Packets dropped by disconnection (S8).
    pub dropped_disconnected: u64,
    /// Packets dropped because the stream was closed with a queue.
    pub dropped_closed: u64,
    /// Packets queued now.
    pub queued: u64,
    /// Priority the stream was opened with.
    pub priority: u8,
    /// Priority it is served at now (differs while promoted, S9).
    pub serving_priority: u8,
    /// `true` once disconnected (S8) until reopened.
    pub disconnected: bool,
}

impl StreamStats {
    pub(crate) fn of(s: &Stream, closed: bool) -> Self {
        let terminal = u64::from(s.terminal_dropped);
        let disconnected = s.state() == DISCONNECTED;
        Self {
            enqueued: s.enqueued,
            dequeued: s.dequeued,
            dropped_queue_full: s.dropped,
            dropped_disconnected: if closed { 0 } else { terminal },
            dropped_closed: if closed { terminal } else { 0 },
            queued: u64::from(s.len),
            priority: s.base,
            serving_priority: s.prio,
            disconnected,
        }
    }

    /// `true` when the S11 conservation identity holds for these counters.
    pub fn is_conserved(&self) -> bool {
        self.enqueued
            == self.dequeued
                + self.dropped_queue_full
                + self.dropped_disconnected
                + self.dropped_closed
                + self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_stream_slot_is_one_cache_line_and_descriptor_fits_32_bytes() {
        assert_eq!(std::mem::size_of::<Stream>(), 64);
        assert_eq!(crate::sched::Scheduler::<u64>::descriptor_bytes(), 32);
        assert_eq!(crate::sched::Scheduler::<u32>::descriptor_bytes(), 24);
    }

    #[test]
    fn stream_id_raw_round_trips() {
        let id = StreamId::new(123_456, 789);
        assert_eq!(StreamId::from_raw(id.to_raw()), Some(id));
        assert_eq!(StreamId::from_raw(1 << 60), None);
    }
}
