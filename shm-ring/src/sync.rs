//! The crate's only door to atomics and interior mutability (STYLE 6, DESIGN T5).
//!
//! Normal builds re-export `std::sync::atomic`; builds with `--cfg qos_loom` re-export
//! `loom::sync::atomic`, so the loom models in `loom-tests/` explore every interleaving
//! of the real protocol code. Nothing else in the crate names `sync::atomic` or
//! `UnsafeCell` (CI greps for it).
//!
//! [`DataCell`] is one 8-byte word of a slot's payload. In normal builds it is an
//! `AtomicU64` accessed with `Relaxed` loads and stores: the word lives in memory that a
//! hostile process may write at any moment, and an atomic access is the only way to read
//! such memory without a data race in the Rust memory model (no torn or "undefined"
//! values, only a value the peer wrote). Ordering between slot words and the ring indices
//! comes from the index `Release`/`Acquire` pairs, never from the word accesses.
//! Under loom it is a `loom::cell::UnsafeCell<u64>` instead, so that loom reports a
//! causality violation whenever the protocol lets a slot word be written and read
//! without an index hand-off ordering the two.

#[cfg(not(qos_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(qos_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One 8-byte payload word of a slot (see the module docs).
#[cfg(not(qos_loom))]
#[repr(transparent)]
pub(crate) struct DataCell(AtomicU64);

#[cfg(not(qos_loom))]
impl DataCell {
    /// Reads the word.
    #[inline(always)]
    pub(crate) fn load(&self) -> u64 {
        // Relaxed: slot words are ordered by the index hand-off (partner pairs: producer's
        // Release store of `tail` / consumer's Acquire load of it, and consumer's Release
        // store of `head` / producer's Acquire load of it).
        self.0.load(Ordering::Relaxed)
    }

    /// Writes the word.
    #[inline(always)]
    pub(crate) fn store(&self, value: u64) {
        // Relaxed: published by the producer's Release store of `tail` (partner: the
        // consumer's Acquire load of `tail`).
        self.0.store(value, Ordering::Relaxed);
    }
}

/// One 8-byte payload word of a slot (see the module docs).
#[cfg(qos_loom)]
pub(crate) struct DataCell(loom::cell::UnsafeCell<u64>);

#[cfg(qos_loom)]
impl DataCell {
    /// A zeroed word.
    pub(crate) fn new() -> Self {
        Self(loom::cell::UnsafeCell::new(0))
    }

    /// Reads the word; loom checks the read is ordered after the last write.
    pub(crate) fn load(&self) -> u64 {
        // SAFETY: loom's `with` checks (and reports) any access that is not ordered by
        // happens-before with the last `with_mut`; the pointer is valid for the cell's life.
        self.0.with(|p| unsafe { *p })
    }

    /// Writes the word; loom checks no read or write of it is concurrent.
    pub(crate) fn store(&self, value: u64) {
        // SAFETY: loom's `with_mut` checks (and reports) any access concurrent with this
        // write; the pointer is valid and unique for the duration of the closure.
        self.0.with_mut(|p| unsafe { *p = value });
    }
}
