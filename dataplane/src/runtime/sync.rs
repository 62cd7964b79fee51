//! The runtime's only door to atomics, interior mutability, `Arc` and parking
//! (STYLE 6, DESIGN T5).
//!
//! Normal builds re-export `std`; builds with `--cfg qos_loom` re-export `loom`, so the
//! models in `loom-tests/` explore every interleaving of the real protocol code
//! ([`Mailbox`](super::mailbox), [`Doorbell`](super::doorbell),
//! [`SnapshotCell`](super::snapshot), the worker counters, the link's rate ledger, the
//! producers' [`PushGate`](super::gate)).
//! Nothing else in the runtime names `std::sync::atomic`, `UnsafeCell` or
//! `thread::park` (CI greps for it).

#[cfg(not(qos_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(qos_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
#[cfg(not(qos_loom))]
pub(crate) use std::thread::{Thread, current as current_thread, yield_now};

#[cfg(qos_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(qos_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
#[cfg(qos_loom)]
pub(crate) use loom::thread::{Thread, current as current_thread, yield_now};

/// A process-wide number for each dataplane built, so that a handle of one is refused
/// by another. Not a protocol between threads, only unique numbers: std's atomic under
/// loom too (a static loom atomic would outlive a model).
pub(crate) fn next_instance() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Parks the calling thread for at most `timeout` (loom: until unparked; loom has no
/// timed park, so the models prove the wake-up protocol without the timeout's help).
#[cfg(not(qos_loom))]
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    std::thread::park_timeout(timeout);
}

/// Parks the calling thread until unparked (loom has no timed park).
#[cfg(qos_loom)]
pub(crate) fn park_timeout(_timeout: std::time::Duration) {
    loom::thread::park();
}

/// A cell whose accesses the caller orders by an atomic hand-off. Under loom it is
/// loom's `UnsafeCell`, which reports any access the hand-off does not order.
#[cfg(not(qos_loom))]
#[derive(Debug)]
pub(crate) struct Slot<T>(std::cell::UnsafeCell<T>);

#[cfg(not(qos_loom))]
impl<T> Slot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` on the value.
    ///
    /// # Safety
    /// No other access to the cell may run concurrently (the caller's protocol orders
    /// every access by happens-before).
    pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: the caller guarantees exclusive access for the duration of the call.
        f(unsafe { &mut *self.0.get() })
    }
}

/// A cell whose accesses the caller orders by an atomic hand-off (loom build).
#[cfg(qos_loom)]
#[derive(Debug)]
pub(crate) struct Slot<T>(loom::cell::UnsafeCell<T>);

#[cfg(qos_loom)]
impl<T> Slot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    /// Runs `f` on the value; loom reports an access not ordered by happens-before.
    ///
    /// # Safety
    /// As for the normal build.
    pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: loom checks exclusivity; the caller's protocol guarantees it.
        self.0.with_mut(|p| f(unsafe { &mut *p }))
    }
}
