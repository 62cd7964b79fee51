//! Error types. Every message names the field, the value found and what was expected.

use std::io;

/// Which half of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The writing half.
    Producer,
    /// The reading half.
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// Creating, attaching to or claiming a side of a region failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation that failed (e.g. `"memfd_create"`).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `capacity` is not a power of two in `1..=MAX_CAPACITY`.
    #[error("capacity is {found} slots, expected a power of two in 1..={max}", max = crate::layout::MAX_CAPACITY)]
    BadCapacity {
        /// Value found.
        found: u32,
    },
    /// `slot_size` is not a multiple of 8 in `MIN_SLOT_SIZE..=MAX_SLOT_SIZE`.
    #[error("slot_size is {found} bytes, expected a multiple of 8 in {min}..={max}", min = crate::layout::MIN_SLOT_SIZE, max = crate::layout::MAX_SLOT_SIZE)]
    BadSlotSize {
        /// Value found.
        found: u32,
    },
    /// The region would exceed `MAX_REGION_LEN`.
    #[error("region_len is {len} bytes, expected at most {max}")]
    RegionTooLarge {
        /// Length asked for.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The header's magic number is wrong: not a ring, or not initialised yet.
    #[error("magic is {found:#018x}, expected {expected:#018x}")]
    BadMagic {
        /// Value found.
        found: u64,
        /// [`crate::layout::MAGIC`].
        expected: u64,
    },
    /// The header's layout version is not ours.
    #[error("version is {found}, expected {expected}")]
    BadVersion {
        /// Value found.
        found: u32,
        /// [`crate::layout::VERSION`].
        expected: u32,
    },
    /// The header's `header_len` is not ours.
    #[error("header_len is {found}, expected {expected}")]
    BadHeaderLen {
        /// Value found.
        found: u32,
        /// [`crate::layout::HEADER_LEN`].
        expected: u32,
    },
    /// The header's `region_len` disagrees with `capacity` and `slot_size`.
    #[error("region_len is {found}, expected {expected} (header_len + capacity * slot_size)")]
    BadRegionLen {
        /// Value found.
        found: u64,
        /// Value implied by the other fields.
        expected: u64,
    },
    /// The file is shorter than the ring it claims to hold.
    #[error("region file is {len} bytes, expected at least {need}")]
    TooSmall {
        /// File length.
        len: u64,
        /// Bytes needed.
        need: u64,
    },
    /// The attacher asked for a specific shape and the region has another.
    #[error("{field} is {found}, expected {expected} (as asked by the attacher)")]
    ConfigMismatch {
        /// `"capacity"` or `"slot_size"`.
        field: &'static str,
        /// Value found in the region.
        found: u32,
        /// Value asked for.
        expected: u32,
    },
    /// The region's size is not sealed against shrinking, so the peer could truncate it
    /// and make our next access fault (SIGBUS).
    #[error(
        "region seals are {found:#x}, expected F_SEAL_SHRINK to be set (a peer could truncate the region)"
    )]
    NotSealed {
        /// The seals found (`F_GET_SEALS`), 0 when the file cannot be sealed.
        found: u32,
    },
    /// The region lives on hugetlbfs (a `MFD_HUGETLB` memfd): its owner can punch a
    /// hole in it while it is mapped, and when the host's huge-page pool is empty the
    /// next access faults with SIGBUS, which the seals do not prevent.
    #[error(
        "the region is backed by huge pages (hugetlbfs), expected an ordinary memfd: its owner could take its pages away while it is mapped (SIGBUS)"
    )]
    HugePages,
    /// The side was already claimed by another handle.
    #[error("{role} side state is {state}, expected {expected} (free): the side is already taken", expected = crate::layout::STATE_FREE)]
    RoleTaken {
        /// The side asked for.
        role: Role,
        /// Its state word.
        state: u32,
    },
    /// The indices found at attach time are inconsistent.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// The peer broke the protocol: an index it published is impossible. The half that
/// detects this is poisoned: every later call returns the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptError {
    /// An index moved backwards.
    #[error("{field} went backwards from {was} to {now}")]
    IndexBackwards {
        /// `"head"` or `"tail"`.
        field: &'static str,
        /// Last value seen.
        was: u64,
        /// Value read now.
        now: u64,
    },
    /// An index jumped beyond what the other side allows.
    #[error("{field} is {now}, expected at most {limit}")]
    IndexAhead {
        /// `"head"` or `"tail"`.
        field: &'static str,
        /// Value read.
        now: u64,
        /// Largest legal value.
        limit: u64,
    },
}

/// A single record could not be taken from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The length word is larger than a slot can hold. The record was consumed and
    /// counted in [`crate::Consumer::rejected`].
    #[error("record length is {len} bytes, expected at most {max} (slot_size - 8)")]
    TooLong {
        /// Length word found.
        len: u64,
        /// Largest legal length.
        max: usize,
    },
    /// The caller's buffer is too small; the record stays in the ring.
    #[error("record length is {len} bytes, the buffer holds only {buf}")]
    BufferTooSmall {
        /// Record length.
        len: usize,
        /// Buffer length.
        buf: usize,
    },
}

/// Writing a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No free slot (or no reserved slot left in a batch). Nothing was written.
    #[error("ring is full")]
    Full,
    /// The ring is full and the consumer has abandoned it: nothing will ever drain it.
    #[error("ring is full and the consumer has abandoned it")]
    Disconnected,
    /// The record is larger than a slot.
    #[error("record is {len} bytes, expected at most {max} (slot_size - 8)")]
    TooLong {
        /// Record length.
        len: usize,
        /// Largest record.
        max: usize,
    },
    /// The consumer broke the protocol; this producer is poisoned.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Reading a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    /// No committed record.
    #[error("ring is empty")]
    Empty,
    /// The ring is empty and the producer has abandoned it: nothing more will come.
    #[error("ring is empty and the producer has abandoned it")]
    Disconnected,
    /// The next record is bad or does not fit the buffer (see [`RecordError`]).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The producer broke the protocol; this consumer is poisoned.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}
