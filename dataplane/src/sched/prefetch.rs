//! Software prefetch hints: the scheduler's only `unsafe` code.
//!
//! Random stream slots and descriptors miss the cache; the batch paths announce the
//! ones they will touch a few steps ahead so the misses overlap instead of queueing.
#![allow(unsafe_code)]

/// Asks the CPU to bring the cache line holding `p` into L1. Any address is fine,
/// including dangling or out-of-bounds ones: a prefetch never faults and never changes
/// memory.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache: it does not dereference `p` in the
    // language's sense, cannot fault, and has no effect on program state. SSE, which it
    // needs, is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
