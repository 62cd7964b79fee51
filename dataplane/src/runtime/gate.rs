//! The last-read handshake between a producer and a stopping worker: no packet that
//! `enqueue` accepted is left behind in a ring.
//!
//! The race to close: a producer checks that its worker is not closed, is preempted,
//! and pushes after the worker's last read of the ring; `enqueue` said yes, and the
//! packet is never taken (an outside-in review lost 40 packets in about 180 runs of
//! producers pushing through a zero drain timeout). The cure is the store-buffer pair
//! again (as in the [doorbell](super::doorbell)), with one flag per producer:
//!
//! * producer: `busy = true`; fence(SeqCst); check "closed"; push ...; `busy = false`
//!   (Release). A burst of pushes (`enqueue_quiet` ... `flush`) stays inside one
//!   entry, so the fence is paid once a burst.
//! * worker, before its last read: the closing flag is set (it observed the stop, or
//!   set "gone" itself); fence(SeqCst); wait while `busy`; then read.
//!
//! The two fences are totally ordered. If the worker's comes first, the producer's
//! check (after its own fence) sees the closing flag and pushes nothing. If the
//! producer's comes first, the worker sees `busy` and waits for its Release store,
//! which comes after every push of the entry: the last read then sees them all. The
//! loom model `t5_gate_*` in `loom-tests/tests/runtime.rs` checks this, and fails when
//! either fence is removed.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicBool, Ordering, fence, yield_now};

/// One producer's flag, in its own cache line (written on every burst).
#[derive(Debug, Default)]
pub struct PushGate {
    busy: CachePadded<AtomicBool>,
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
        // Relaxed store, then the fence that orders it before the producer's check
        // (partner: the fence in `wait_idle`).
        self.busy.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Producer side: no check-then-push is in progress any more.
    #[inline]
    pub fn leave(&self) {
        // Release: the pushes before it are visible to a worker whose Acquire load in
        // `wait_idle` reads `false`.
        self.busy.store(false, Ordering::Release);
    }

    /// Worker side, after the closing flag is set (or observed) and before the last
    /// read of this producer's ring: waits until the producer is outside the gate.
    /// Gives up when `give_up` says so (a producer that never ends its burst must not
    /// hold the worker for ever); returns whether the producer was outside.
    pub fn wait_idle(&self, mut give_up: impl FnMut() -> bool) -> bool {
        // SeqCst fence: partner of the producer's fence in `enter`.
        fence(Ordering::SeqCst);
        // Acquire: partner of `leave`'s Release store.
        while self.busy.load(Ordering::Acquire) {
            if give_up() {
                return false;
            }
            yield_now();
        }
        true
    }
}
