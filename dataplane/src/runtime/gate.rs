//! The last-read handshake between a producer and a stopping worker: no packet that
//! `enqueue` accepted is left behind in a ring.
//!
//! The race to close: a producer checks that its worker is not closed, is preempted,
//! and pushes after the worker's last read of the ring; `enqueue` said yes, and the
//! packet is never taken (an outside-in review lost 40 packets in about 180 runs of
//! producers pushing through a zero drain timeout). The cure is the store-buffer pair
//! again (as in the [doorbell](super::doorbell)), with one entry count per producer:
//!
//! * producer: `seq` to odd (inside); fence(SeqCst); check "closed"; push ...; `seq`
//!   to the next even value (Release). A burst of pushes (`enqueue_quiet` ... `flush`)
//!   stays inside one entry, so the fence is paid once a burst.
//! * worker, before its last read: the closing flag is set (it observed the stop, or
//!   set "gone" itself); fence(SeqCst); read `seq` (Acquire); if odd, wait until it
//!   changes (the producer left that entry; a later entry made its check after the
//!   worker's fence, so it saw the closing flag and pushes nothing); then read the ring.
//!   Both stores are Release, so whichever later value the worker reads, the pushes of
//!   the entry it waited for are visible to it.
//!
//! The two fences are totally ordered. If the worker's comes first, the producer's
//! check (after its own fence) sees the closing flag and pushes nothing. If the
//! producer's comes first, the worker sees the odd count and waits for the Release
//! store that ends the entry, which comes after every push of it: the last read then
//! sees them all. Waiting for a change rather than for "outside" means a producer
//! entering and leaving back to back cannot starve the worker. The loom models
//! `t5_gate_*` in `loom-tests/tests/runtime.rs` check this, and fail when either fence
//! is removed or the entry's store is made Relaxed.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering, fence, yield_now};

/// One producer's entry count, in its own cache line (written twice a burst): odd while
/// the producer is inside. Only its producer writes it.
#[derive(Debug, Default)]
pub struct PushGate {
    seq: CachePadded<AtomicU64>,
}

impl PushGate {
    /// A gate no producer is inside.
    pub fn new() -> Self {
        Self::default()
    }

    /// Producer side: call before checking whether the worker is closed, and stay
    /// inside until every push that followed the check is done.
    #[inline]
    pub fn enter(&self) {
        // Relaxed load: the producer is the only writer. Release store: a worker that
        // reads this entry's count in place of the previous `leave`'s (it changed twice
        // between two looks) must still see that entry's pushes (the loom models fail
        // with Relaxed here). Then the fence that orders the store before the
        // producer's check (partner: the fence in `wait_idle`).
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s | 1, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Producer side: no check-then-push is in progress any more.
    #[inline]
    pub fn leave(&self) {
        // Relaxed load: the only writer. Release store: the pushes before it are
        // visible to a worker whose Acquire load in `wait_idle` reads the new value.
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }

    /// Worker side, after the closing flag is set (or observed) and before the last
    /// read of this producer's ring: waits until the producer is outside the gate.
    /// Gives up when `give_up` says so (a producer that never ends its burst must not
    /// hold the worker for ever); returns whether the producer was outside.
    pub fn wait_idle(&self, mut give_up: impl FnMut() -> bool) -> bool {
        // SeqCst fence: partner of the producer's fence in `enter`.
        fence(Ordering::SeqCst);
        // Acquire: partner of `leave`'s Release store.
        let inside = self.seq.load(Ordering::Acquire);
        if inside & 1 == 0 {
            return true;
        }
        while self.seq.load(Ordering::Acquire) == inside {
            if give_up() {
                return false;
            }
            yield_now();
        }
        true
    }
}
