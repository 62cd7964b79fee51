//! What the embedder plugs in at the end of each worker: where scheduled packets go
//! ([`Egress::send`]) and where packets the dataplane did not send go
//! ([`Egress::discard`]), so that every packet is accounted for (S11).

use std::collections::VecDeque;

use crate::sched::{Dequeued, DropReason, RefuseReason, StreamId};

/// A worker's egress: called on the worker thread, once per loop iteration with a
/// batch of scheduled packets.
///
/// A panic in either method is caught. The packets the egress took before it count
/// as sent; the worker then marks itself [`Panicked`](super::WorkerState::Panicked),
/// its producers' pushes return `Closed`, it calls the egress no more, and it
/// discards what it holds and what still reaches it, counted, until the dataplane
/// stops ([`DiscardReason::EgressFailed`]; queued packets are dropped `closed`).
/// `shutdown` returns the panic as an error whose report still balances.
pub trait Egress<P>: Send + 'static {
    /// Sends what it can of `out`, taking packets from the front with
    /// [`Outbox::pop`]. Packets it leaves stay queued, in order, and are offered again
    /// (first) on the next iteration: refusing the tail is how an egress applies its
    /// own backpressure. `now_ns` is the worker's clock for this iteration.
    fn send(&mut self, now_ns: u64, out: &mut Outbox<'_, P>);

    /// Receives a packet the dataplane will not send, with the reason (already
    /// counted). The default drops it; an embedder recycling buffers takes it back here.
    fn discard(&mut self, packet: Discarded<P>) {
        drop(packet);
    }
}

/// The scheduled packets offered to [`Egress::send`], in send order.
#[derive(Debug)]
pub struct Outbox<'a, P> {
    queue: &'a mut VecDeque<Dequeued<P>>,
    taken: u64,
    taken_bytes: u64,
}

impl<'a, P> Outbox<'a, P> {
    pub(crate) fn new(queue: &'a mut VecDeque<Dequeued<P>>) -> Self {
        Self {
            queue,
            taken: 0,
            taken_bytes: 0,
        }
    }

    /// Packets and bytes taken so far.
    pub(crate) fn taken(&self) -> (u64, u64) {
        (self.taken, self.taken_bytes)
    }

    /// Packets offered.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// `true` when nothing is offered.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next packet, without taking it.
    pub fn front(&self) -> Option<&Dequeued<P>> {
        self.queue.front()
    }

    /// Takes the next packet: it counts as sent.
    pub fn pop(&mut self) -> Option<Dequeued<P>> {
        let d = self.queue.pop_front()?;
        self.taken += 1;
        self.taken_bytes += u64::from(d.len);
        Some(d)
    }

    /// The offered packets, in order, without taking them.
    pub fn iter(&self) -> impl Iterator<Item = &Dequeued<P>> {
        self.queue.iter()
    }
}

/// Why the dataplane did not send a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// The scheduler refused it at the door (not counted as enqueued).
    Refused(RefuseReason),
    /// The scheduler counted it as enqueued and dropped it (tail drop, AQM, expiry,
    /// disconnect, close).
    Dropped(DropReason),
    /// Its stream was never opened on this worker (the open failed; see
    /// [`WorkerStats::open_failed`](super::WorkerStats::open_failed)), or was closed.
    UnknownStream,
    /// Dequeued but not sent when the dataplane stopped ([`StopMode::Discard`], or the
    /// drain timed out). Counted under `shutdown_discarded`.
    ///
    /// [`StopMode::Discard`]: super::StopMode::Discard
    Shutdown,
    /// Shed at ingress while the control plane degrades the dataplane (O5): its
    /// stream's tier is being shed to protect the higher ones. Counted under
    /// [`WorkerStats::shed`](super::WorkerStats::shed).
    Shed,
    /// The worker's egress panicked: dequeued and not taken when it did, or reached
    /// the worker afterwards. Counted under
    /// [`WorkerStats::egress_failed`](super::WorkerStats::egress_failed); never handed
    /// to that egress (the worker calls it no more), only named in counters.
    EgressFailed,
}

impl DiscardReason {
    /// Every distinct name [`DiscardReason::as_str`] gives, in a fixed order: a refusal
    /// and a drop with the same name (`closed`, `disconnected`) share one entry, and a
    /// refusal of an unknown stream shares `unknown_stream` with
    /// [`DiscardReason::UnknownStream`]. For per-name counters in an array.
    pub const NAMES: [&'static str; 11] = [
        "queue_full",
        "disconnected",
        "closed",
        "aqm",
        "expired",
        "unknown_stream",
        "invalid_length",
        "pool_exhausted",
        "shutdown",
        "shed",
        "egress_failed",
    ];

    /// Position of [`DiscardReason::as_str`] in [`DiscardReason::NAMES`].
    pub fn name_index(self) -> usize {
        match self {
            Self::Dropped(DropReason::QueueFull) => 0,
            Self::Dropped(DropReason::Disconnected) | Self::Refused(RefuseReason::Disconnected) => {
                1
            }
            Self::Dropped(DropReason::Closed) | Self::Refused(RefuseReason::Closed) => 2,
            Self::Dropped(DropReason::Aqm) => 3,
            Self::Dropped(DropReason::Expired) => 4,
            Self::Refused(RefuseReason::UnknownStream) | Self::UnknownStream => 5,
            Self::Refused(RefuseReason::InvalidLength) => 6,
            Self::Refused(RefuseReason::PoolExhausted) => 7,
            Self::Shutdown => 8,
            Self::Shed => 9,
            Self::EgressFailed => 10,
        }
    }

    /// Short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused(r) => r.as_str(),
            Self::Dropped(r) => r.as_str(),
            Self::UnknownStream => "unknown_stream",
            Self::Shutdown => "shutdown",
            Self::Shed => "shed",
            Self::EgressFailed => "egress_failed",
        }
    }
}

/// A packet handed to [`Egress::discard`].
#[derive(Debug, PartialEq, Eq)]
pub struct Discarded<P> {
    /// The caller's packet.
    pub packet: P,
    /// Its stream on this worker, when it had one.
    pub stream: Option<StreamId>,
    /// Why it was not sent.
    pub reason: DiscardReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S11: per-name discard counters (the gateway keeps one per name) cover every
    /// reason, each under its own name, and every name is reachable.
    #[test]
    fn s11_every_discard_reason_has_its_name_in_names() {
        let reasons: Vec<DiscardReason> = DropReason::ALL
            .iter()
            .map(|&r| DiscardReason::Dropped(r))
            .chain(RefuseReason::ALL.iter().map(|&r| DiscardReason::Refused(r)))
            .chain([
                DiscardReason::UnknownStream,
                DiscardReason::Shutdown,
                DiscardReason::Shed,
                DiscardReason::EgressFailed,
            ])
            .collect();
        let mut reached = [false; DiscardReason::NAMES.len()];
        for r in reasons {
            assert_eq!(DiscardReason::NAMES[r.name_index()], r.as_str(), "{r:?}");
            reached[r.name_index()] = true;
        }
        assert!(
            reached.iter().all(|&x| x),
            "every name has a reason: {reached:?}"
        );
    }
}
