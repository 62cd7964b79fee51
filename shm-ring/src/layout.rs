//! The region's byte layout, for peers written in any language.
//!
//! All integers are little-endian, all offsets are in bytes from the start of the region.
//!
//! | offset | size | field | written by |
//! | --- | --- | --- | --- |
//! | 0 | 8 | `magic` = [`MAGIC`] | creator, once |
//! | 8 | 4 | `version` = [`VERSION`] | creator, once |
//! | 12 | 4 | `header_len` = [`HEADER_LEN`] | creator, once |
//! | 16 | 4 | `capacity` (slots, a power of two) | creator, once |
//! | 20 | 4 | `slot_size` (bytes, a multiple of 8) | creator, once |
//! | 24 | 8 | `region_len` = `header_len + capacity * slot_size` | creator, once |
//! | 128 | 32 | producer line: `index` (u64 `tail`), `heartbeat` (u64), `pid` (u32), `state` (u32) | producer |
//! | 256 | 32 | consumer line: `index` (u64 `head`), `heartbeat` (u64), `pid` (u32), `state` (u32) | consumer |
//! | 384 | `capacity * slot_size` | slots | producer |
//!
//! Each line is 128 bytes apart, so the producer's and the consumer's words never share a
//! cache line (128 covers the adjacent-line prefetcher of x86 as well as 128-byte lines).
//! Within a side's line, the field offsets are [`SIDE_INDEX`], [`SIDE_HEARTBEAT`],
//! [`SIDE_PID`] and [`SIDE_STATE`].
//!
//! A slot holds one record: an 8-byte length word (the payload length in bytes, must be
//! `<= slot_size - 8`) followed by the payload, zero-padded to a multiple of 8 bytes.

use crate::error::RegionError;
use crate::sync::{AtomicU32, AtomicU64};

/// The region's magic number: the bytes `QOSRING1` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"QOSRING1");
/// The layout version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Length of the header in bytes; the first slot starts here.
pub const HEADER_LEN: usize = 384;
/// Offset of the `magic` field.
pub const OFFSET_MAGIC: usize = 0;
/// Offset of the `version` field.
pub const OFFSET_VERSION: usize = 8;
/// Offset of the `header_len` field.
pub const OFFSET_HEADER_LEN: usize = 12;
/// Offset of the `capacity` field.
pub const OFFSET_CAPACITY: usize = 16;
/// Offset of the `slot_size` field.
pub const OFFSET_SLOT_SIZE: usize = 20;
/// Offset of the `region_len` field.
pub const OFFSET_REGION_LEN: usize = 24;
/// Offset of the producer's line.
pub const OFFSET_PRODUCER: usize = 128;
/// Offset of the consumer's line.
pub const OFFSET_CONSUMER: usize = 256;
/// Offset, within a side's line, of its free-running `u64` index (`tail` or `head`).
pub const SIDE_INDEX: usize = 0;
/// Offset, within a side's line, of its `u64` heartbeat counter.
pub const SIDE_HEARTBEAT: usize = 8;
/// Offset, within a side's line, of its `u32` process id.
pub const SIDE_PID: usize = 16;
/// Offset, within a side's line, of its `u32` state (see [`STATE_ATTACHED`]).
pub const SIDE_STATE: usize = 20;
/// Side state: nobody has taken this side yet.
pub const STATE_FREE: u32 = 0;
/// Side state: a live handle owns this side.
pub const STATE_ATTACHED: u32 = 1;
/// Side state: the handle was dropped; it will never touch the ring again.
pub const STATE_ABANDONED: u32 = 2;
/// Cache-line size [`RingConfig::for_records`] rounds slots up to.
pub const CACHE_LINE: usize = 64;
/// Bytes of a slot taken by the record's length word.
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest producer index a [`crate::Producer`] accepts when it takes its side of an
/// existing region: its index then has room for 2^63 more records before it could
/// overflow (about 292 years at a billion records a second), where an index planted
/// near `u64::MAX` by a hostile peer would wrap after a few pushes.
pub const MAX_CLAIM_INDEX: u64 = 1 << 63;
/// Largest accepted capacity, in slots.
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Smallest accepted slot size, in bytes (a length word and one payload word).
pub const MIN_SLOT_SIZE: u32 = 16;
/// Largest accepted slot size, in bytes.
pub const MAX_SLOT_SIZE: u32 = 1 << 16;
/// Largest accepted region, in bytes.
pub const MAX_REGION_LEN: u64 = 1 << 30;

/// Shape of a ring: how many slots, and how large each one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of slots; a power of two in `1..=MAX_CAPACITY`.
    pub capacity: u32,
    /// Bytes per slot, including the 8-byte length word; a multiple of 8 in
    /// `MIN_SLOT_SIZE..=MAX_SLOT_SIZE`. Records carry up to `slot_size - 8` bytes.
    pub slot_size: u32,
}

impl RingConfig {
    /// A ring of `capacity` slots, each able to carry at least `max_record` payload
    /// bytes. The slot (8-byte length word + payload) is rounded up to a whole number of
    /// [`CACHE_LINE`]s, so the two sides never write the same cache line while working
    /// on neighbouring slots (measured: about 2x the throughput of densely packed slots,
    /// see `docs/DECISIONS.md`); [`RingConfig::max_record`] tells the real limit. For
    /// dense slots, build the struct directly. Validated by [`RingConfig::validate`].
    pub fn for_records(capacity: u32, max_record: u32) -> Self {
        let line = CACHE_LINE as u32;
        let bytes = max_record.saturating_add(RECORD_HEADER_LEN as u32);
        let slot_size = bytes.saturating_add(line - 1) / line * line;
        Self {
            capacity,
            slot_size,
        }
    }

    /// Largest record payload, in bytes.
    pub fn max_record(&self) -> usize {
        (self.slot_size as usize).saturating_sub(RECORD_HEADER_LEN)
    }

    /// Total region length in bytes for this shape.
    pub fn region_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.capacity) * u64::from(self.slot_size)
    }

    /// Checks every field against the limits above.
    ///
    /// # Errors
    /// [`RegionError::BadCapacity`], [`RegionError::BadSlotSize`] or
    /// [`RegionError::RegionTooLarge`], naming the offending value.
    pub fn validate(&self) -> Result<(), RegionError> {
        let cap = self.capacity;
        if cap == 0 || cap > MAX_CAPACITY || !cap.is_power_of_two() {
            return Err(RegionError::BadCapacity { found: cap });
        }
        let slot = self.slot_size;
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot) || !slot.is_multiple_of(8) {
            return Err(RegionError::BadSlotSize { found: slot });
        }
        if self.region_len() > MAX_REGION_LEN {
            return Err(RegionError::RegionTooLarge {
                len: self.region_len(),
                max: MAX_REGION_LEN,
            });
        }
        Ok(())
    }
}

/// The write-once part of the header (offsets 0..128).
#[cfg_attr(not(qos_loom), repr(C, align(128)))]
pub(crate) struct FixedLine {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) header_len: AtomicU32,
    pub(crate) capacity: AtomicU32,
    pub(crate) slot_size: AtomicU32,
    pub(crate) region_len: AtomicU64,
}

/// One side's line: written only by that side, read by both.
#[cfg_attr(not(qos_loom), repr(C, align(128)))]
pub(crate) struct SideLine {
    /// Free-running count of records this side has moved past (`tail` or `head`).
    pub(crate) index: AtomicU64,
    /// Bumped by [`crate::Producer::heartbeat`] / [`crate::Consumer::heartbeat`].
    pub(crate) heartbeat: AtomicU64,
    /// Process id of the owner, 0 when unknown.
    pub(crate) pid: AtomicU32,
    /// One of `STATE_FREE`, `STATE_ATTACHED`, `STATE_ABANDONED`.
    pub(crate) state: AtomicU32,
}

/// The whole header. In normal builds it is viewed in place over the mapped region; under
/// loom it is a heap object (loom atomics have another size, so no layout is asserted).
#[cfg_attr(not(qos_loom), repr(C))]
pub(crate) struct Header {
    pub(crate) fixed: FixedLine,
    pub(crate) producer: SideLine,
    pub(crate) consumer: SideLine,
}

#[cfg(qos_loom)]
impl SideLine {
    fn new() -> Self {
        Self {
            index: AtomicU64::new(0),
            heartbeat: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            state: AtomicU32::new(STATE_FREE),
        }
    }
}

#[cfg(qos_loom)]
impl Header {
    /// A zeroed header, as a fresh memfd would hold.
    pub(crate) fn new_zeroed() -> Self {
        Self {
            fixed: FixedLine {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                header_len: AtomicU32::new(0),
                capacity: AtomicU32::new(0),
                slot_size: AtomicU32::new(0),
                region_len: AtomicU64::new(0),
            },
            producer: SideLine::new(),
            consumer: SideLine::new(),
        }
    }
}

// The in-place view of the header must match the documented byte layout exactly. Loom
// builds use a heap header of loom atomics whose size differs, so the checks stay out.
#[cfg(not(qos_loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Header>() == HEADER_LEN);
    assert!(align_of::<Header>() == 128);
    assert!(offset_of!(Header, fixed) + offset_of!(FixedLine, magic) == OFFSET_MAGIC);
    assert!(offset_of!(FixedLine, version) == OFFSET_VERSION);
    assert!(offset_of!(FixedLine, header_len) == OFFSET_HEADER_LEN);
    assert!(offset_of!(FixedLine, capacity) == OFFSET_CAPACITY);
    assert!(offset_of!(FixedLine, slot_size) == OFFSET_SLOT_SIZE);
    assert!(offset_of!(FixedLine, region_len) == OFFSET_REGION_LEN);
    assert!(offset_of!(Header, producer) == OFFSET_PRODUCER);
    assert!(offset_of!(Header, consumer) == OFFSET_CONSUMER);
    assert!(offset_of!(SideLine, index) == SIDE_INDEX);
    assert!(offset_of!(SideLine, heartbeat) == SIDE_HEARTBEAT);
    assert!(offset_of!(SideLine, pid) == SIDE_PID);
    assert!(offset_of!(SideLine, state) == SIDE_STATE);
    assert!(size_of::<crate::sync::DataCell>() == 8);
    assert!(HEADER_LEN.is_multiple_of(128));
};

/// Geometry of an attached ring, copied out of the header once (after validation) and
/// never re-read: a peer rewriting the header later cannot change our bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Slots; a power of two.
    pub(crate) capacity: u64,
    /// `capacity - 1`.
    pub(crate) mask: u64,
    /// 8-byte words per slot (`slot_size / 8`), `>= 2`.
    pub(crate) slot_words: usize,
    /// Largest payload, bytes (`slot_size - 8`).
    pub(crate) max_record: usize,
    /// Shape this geometry was made from.
    pub(crate) config: RingConfig,
}

impl Geometry {
    /// Geometry of a validated config.
    pub(crate) fn new(config: RingConfig) -> Result<Self, RegionError> {
        config.validate()?;
        Ok(Self {
            capacity: u64::from(config.capacity),
            mask: u64::from(config.capacity) - 1,
            slot_words: config.slot_size as usize / 8,
            max_record: config.max_record(),
            config,
        })
    }

    /// Total number of payload words in the slot area.
    pub(crate) fn total_words(&self) -> usize {
        self.capacity as usize * self.slot_words
    }

    /// Word offset of the slot holding free-running index `index`.
    #[inline(always)]
    pub(crate) fn slot_base(&self, index: u64) -> usize {
        ((index & self.mask) as usize) * self.slot_words
    }
}
