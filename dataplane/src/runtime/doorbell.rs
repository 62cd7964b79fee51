//! The park/unpark protocol of an idle worker: no lost wake-up.
//!
//! A worker with nothing to do parks; whoever hands it work (a producer pushing into
//! one of its rings, the control side publishing a policy, `shutdown`) rings its
//! doorbell. The race to close: the worker checks its rings, finds them empty, and
//! parks just as a producer pushes. The protocol is the classic store-buffer pair, made
//! safe with a `SeqCst` fence on each side:
//!
//! * worker: `sleeping = true` (SeqCst); fence(SeqCst); look for work; park only if
//!   none; `sleeping = false`.
//! * waker: publish the work (the ring's Release store); fence(SeqCst); if `sleeping`,
//!   swap it to false and unpark the worker.
//!
//! The two fences are totally ordered: either the waker's fence comes first, and the
//! worker's look for work sees the work, or the worker's comes first, and the waker
//! sees `sleeping` and unparks (an unpark before the park makes the park return at
//! once). The loom model `loom-tests/tests/runtime.rs` checks this, and fails when
//! either fence is removed. The worker also parks with a timeout, so a heartbeat is
//! published at least that often; correctness never depends on it.

use std::time::Duration;

use super::sync::{AtomicBool, Ordering, Thread, current_thread, fence, park_timeout};

/// A worker's doorbell. Created by the worker thread itself ([`Doorbell::for_current`]).
#[derive(Debug)]
pub struct Doorbell {
    sleeping: AtomicBool,
    thread: Thread,
}

impl Doorbell {
    /// A doorbell that unparks the calling thread.
    pub fn for_current() -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            thread: current_thread(),
        }
    }

    /// Worker side: parks for at most `timeout` unless `has_work` finds work after the
    /// doorbell is armed. Returns `true` if it parked.
    pub fn sleep_unless(&self, timeout: Duration, has_work: impl FnOnce() -> bool) -> bool {
        // SeqCst store and fence: partner of the waker's fence (see the module docs).
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let parked = !has_work();
        if parked {
            park_timeout(timeout);
        }
        // Relaxed: only the worker and wakers' swaps write it; a stale `true` seen by a
        // waker costs one spurious unpark, which `park` tolerates.
        self.sleeping.store(false, Ordering::Relaxed);
        parked
    }

    /// Waker side: call after publishing work (a ring push, a policy store). Unparks
    /// the worker if it is, or is about to be, parked.
    #[inline]
    pub fn ring(&self) {
        // SeqCst fence: orders the work's publication before the load of `sleeping`
        // (partner: the worker's fence in `sleep_unless`).
        fence(Ordering::SeqCst);
        // Relaxed load, then a swap so that of several wakers only one unparks.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            self.thread.unpark();
        }
    }
}
