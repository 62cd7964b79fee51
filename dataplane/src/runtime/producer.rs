//! Producer handles: how transport threads hand packets and stream control to the
//! workers (T2). One `rtrb` ring per (producer, worker) pair; a stream's packets and its
//! open / update / close messages travel on the same ring, so they stay in order.

use std::fmt;

use thiserror::Error;

use super::Shared;
use super::sync::Arc;
use crate::sched::{StreamConfig, StreamError};

/// What travels on a ring.
#[derive(Debug)]
pub(crate) enum Msg<P> {
    Packet {
        local: u32,
        len: u32,
        packet: P,
    },
    Open {
        local: u32,
        key: u64,
        config: StreamConfig,
    },
    Update {
        local: u32,
        config: StreamConfig,
    },
    Close {
        local: u32,
    },
}

/// A stream opened through a [`Producer`]: valid only with that producer (its packets
/// must travel on the same rings as its control messages), and of that dataplane
/// (a handle of another dataplane is refused, not taken for one of this one's streams).
/// `Copy`, 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    instance: u32,
    producer: u16,
    worker: u16,
    local: u32,
    generation: u32,
}

impl StreamHandle {
    /// The worker that owns the stream.
    pub fn worker(self) -> usize {
        usize::from(self.worker)
    }
}

/// The packet handed back by [`Producer::enqueue`], with the reason.
#[derive(PartialEq, Eq)]
pub enum EnqueueError<P> {
    /// The owner's ring is full: backpressure. Nothing was lost; retry later.
    Full(P),
    /// The handle's stream was closed through this producer (or belongs to another).
    StaleHandle(P),
    /// The dataplane is stopping, or the owning worker is gone (it panicked).
    Closed(P),
}

impl<P> EnqueueError<P> {
    /// The packet, back.
    pub fn into_packet(self) -> P {
        match self {
            Self::Full(p) | Self::StaleHandle(p) | Self::Closed(p) => p,
        }
    }
}

impl<P> fmt::Debug for EnqueueError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::StaleHandle(_) => "StaleHandle(..)",
            Self::Closed(_) => "Closed(..)",
        })
    }
}

impl<P> fmt::Display for EnqueueError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "enqueue: the worker's ring is full (backpressure)",
            Self::StaleHandle(_) => "enqueue: stream handle is closed or not this producer's",
            Self::Closed(_) => "enqueue: the dataplane is stopping or the worker is gone",
        })
    }
}

impl<P> std::error::Error for EnqueueError<P> {}

/// Why a stream control message was not sent.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// The owner's ring is full; retry later.
    #[error("stream control: the worker's ring is full (backpressure)")]
    Full,
    /// The handle's stream was closed through this producer (or belongs to another).
    #[error("stream control: stream handle is closed or not this producer's")]
    StaleHandle,
    /// The dataplane is stopping, or the worker is gone.
    #[error("stream control: the dataplane is stopping or the worker is gone")]
    Closed,
    /// `open_on` named a worker that does not exist.
    #[error("worker: {worker}, expected 0..{workers}")]
    NoSuchWorker {
        /// The index given.
        worker: usize,
        /// Worker count.
        workers: usize,
    },
    /// The stream configuration is one the scheduler refuses
    /// ([`StreamConfig::check`]); nothing was sent.
    #[error("{field}: {value}, expected {expected}")]
    InvalidConfig {
        /// The field (`weight`, `cap.rate_bps`, `cap.burst_bytes`).
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
}

impl ControlError {
    /// Checks `config` as the worker's scheduler would, so that a bad one is refused
    /// here, naming the field, rather than counted on the worker.
    fn check(config: &StreamConfig) -> Result<(), Self> {
        config.check().map_err(|e| match e {
            StreamError::Cap {
                field,
                value,
                expected,
            } => Self::InvalidConfig {
                field: if field == "rate_bps" {
                    "cap.rate_bps"
                } else {
                    "cap.burst_bytes"
                },
                value,
                expected,
            },
            StreamError::Weight => Self::InvalidConfig {
                field: "weight",
                value: 0,
                expected: "1..=65535",
            },
            _ => Self::InvalidConfig {
                field: "config",
                value: 0,
                expected: "a configuration StreamConfig::check accepts",
            },
        })
    }
}

/// Local stream numbers of one (producer, worker) pair.
#[derive(Debug, Default)]
struct Locals {
    generation: Vec<u32>,
    open: Vec<bool>,
    free: Vec<u32>,
}

/// A transport thread's handle: opens streams and enqueues their packets. `Send`, not
/// `Clone`: each producer has its own rings (T2). Dropping it tells the workers this
/// producer is done (a graceful shutdown waits for that).
pub struct Producer<P> {
    index: usize,
    rings: Vec<rtrb::Producer<Msg<P>>>,
    locals: Vec<Locals>,
    pending_bell: Vec<bool>,
    /// Packets handed back because a ring was full (published for the control plane).
    full_events: u64,
    /// Inside this producer's gate (a burst under way; `gate.rs`).
    entered: bool,
    shared: Arc<Shared>,
}

impl<P> fmt::Debug for Producer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("index", &self.index)
            .field("workers", &self.rings.len())
            .finish()
    }
}

impl<P: Send> Producer<P> {
    pub(crate) fn new(
        index: usize,
        rings: Vec<rtrb::Producer<Msg<P>>>,
        shared: Arc<Shared>,
    ) -> Self {
        let n = rings.len();
        Self {
            index,
            rings,
            locals: (0..n).map(|_| Locals::default()).collect(),
            pending_bell: vec![false; n],
            full_events: 0,
            entered: false,
            shared,
        }
    }

    /// This producer's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The worker that owns streams opened with `key` by [`Producer::open`]: a fixed
    /// hash of the key, the same for every producer and every run.
    pub fn worker_for(&self, key: u64) -> usize {
        (mix(key) % self.rings.len() as u64) as usize
    }

    /// Opens a stream on the worker chosen by hashing `key` (a connection id, a
    /// 5-tuple hash). The open travels on the ring ahead of the stream's packets; if
    /// the scheduler refuses it (table full), its packets come back through
    /// [`Egress::discard`](super::Egress::discard) as `UnknownStream`, counted.
    pub fn open(&mut self, key: u64, config: StreamConfig) -> Result<StreamHandle, ControlError> {
        self.open_on(self.worker_for(key), key, config)
    }

    /// Opens a stream on worker `worker` (explicit placement). `key` names the stream
    /// in reports and metrics (the `stream_id` label); it need not be unique.
    pub fn open_on(
        &mut self,
        worker: usize,
        key: u64,
        config: StreamConfig,
    ) -> Result<StreamHandle, ControlError> {
        if worker >= self.rings.len() {
            return Err(ControlError::NoSuchWorker {
                worker,
                workers: self.rings.len(),
            });
        }
        ControlError::check(&config)?;
        let l = &mut self.locals[worker];
        let local = match l.free.last() {
            Some(&local) => local,
            None => l.generation.len() as u32,
        };
        self.send(worker, Msg::Open { local, key, config })?;
        let l = &mut self.locals[worker];
        if l.free.pop().is_none() {
            l.generation.push(0);
            l.open.push(false);
        }
        l.open[local as usize] = true;
        Ok(StreamHandle {
            instance: self.shared.instance,
            producer: self.index as u16,
            worker: worker as u16,
            local,
            generation: l.generation[local as usize],
        })
    }

    /// Changes a stream's priority, weight or cap (in order with its packets).
    pub fn update(&mut self, h: StreamHandle, config: StreamConfig) -> Result<(), ControlError> {
        self.check(h).map_err(|()| ControlError::StaleHandle)?;
        ControlError::check(&config)?;
        self.send(
            h.worker(),
            Msg::Update {
                local: h.local,
                config,
            },
        )
    }

    /// Closes a stream after its packets already enqueued (the worker drops what is
    /// still queued, counted `closed`). The handle is stale afterwards.
    pub fn close(&mut self, h: StreamHandle) -> Result<(), ControlError> {
        self.check(h).map_err(|()| ControlError::StaleHandle)?;
        self.send(h.worker(), Msg::Close { local: h.local })?;
        let l = &mut self.locals[h.worker()];
        let i = h.local as usize;
        l.open[i] = false;
        l.generation[i] = l.generation[i].wrapping_add(1);
        l.free.push(h.local);
        Ok(())
    }

    /// Enqueues `packet` (of `len` bytes) on stream `h` and wakes its worker if it is
    /// parked. On a full ring the packet comes back ([`EnqueueError::Full`]). A burst
    /// of one: two SeqCst fences a packet (the stop handshake's and the wake-up's),
    /// where [`Producer::enqueue_quiet`] + [`Producer::flush`] pay two a burst.
    #[inline]
    pub fn enqueue(&mut self, h: StreamHandle, packet: P, len: u32) -> Result<(), EnqueueError<P>> {
        self.enqueue_quiet(h, packet, len)?;
        self.flush();
        Ok(())
    }

    /// As [`Producer::enqueue`], without waking the worker: call [`Producer::flush`]
    /// after a burst (one wake-up check per burst instead of per packet). A worker
    /// left parked wakes by itself after its `park_timeout`, but flush before the
    /// dataplane stops (or drop the producer): a stopping worker's last read of this
    /// producer's rings waits up to a second for a burst that was never flushed, and
    /// counts it in [`WorkerStats::gate_timeouts`](super::WorkerStats::gate_timeouts).
    #[inline]
    pub fn enqueue_quiet(
        &mut self,
        h: StreamHandle,
        packet: P,
        len: u32,
    ) -> Result<(), EnqueueError<P>> {
        if self.check(h).is_err() {
            return Err(EnqueueError::StaleHandle(packet));
        }
        let w = h.worker();
        // The check and the push happen inside the gate: a stopping worker's last read
        // waits for the burst to end (`gate.rs`).
        self.enter();
        if self.shared.is_closed(w) {
            self.leave();
            return Err(EnqueueError::Closed(packet));
        }
        let msg = Msg::Packet {
            local: h.local,
            len,
            packet,
        };
        match self.rings[w].push(msg) {
            Ok(()) => {
                self.pending_bell[w] = true;
                Ok(())
            }
            Err(rtrb::PushError::Full(Msg::Packet { packet, .. })) => {
                // A caller may retry without flushing: the burst ends here.
                self.leave();
                self.full_events += 1;
                self.shared.ring_full[self.index].publish(self.full_events);
                Err(EnqueueError::Full(packet))
            }
            Err(rtrb::PushError::Full(_)) => unreachable!("push hands back the message it got"),
        }
    }

    /// Wakes every worker this producer pushed to since the last flush, if parked, and
    /// ends the burst: a stopping worker's last read of this producer's rings waits for
    /// the burst under way to end (at most a second), so flush after each one.
    #[inline]
    pub fn flush(&mut self) {
        for (w, pending) in self.pending_bell.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.shared.ring(w);
            }
        }
        self.leave();
    }

    /// Enters this producer's gate, once a burst (`gate.rs`).
    #[inline]
    fn enter(&mut self) {
        if !self.entered {
            self.shared.gates[self.index].enter();
            self.entered = true;
        }
    }

    /// Leaves the gate: no check-then-push is in progress.
    #[inline]
    fn leave(&mut self) {
        if self.entered {
            self.shared.gates[self.index].leave();
            self.entered = false;
        }
    }

    /// Free room in the ring to `worker`, in messages.
    pub fn free_slots(&self, worker: usize) -> usize {
        self.rings.get(worker).map_or(0, rtrb::Producer::slots)
    }

    fn check(&self, h: StreamHandle) -> Result<(), ()> {
        if usize::from(h.producer) != self.index || h.instance != self.shared.instance {
            return Err(());
        }
        let l = self.locals.get(h.worker()).ok_or(())?;
        let i = h.local as usize;
        match (l.open.get(i), l.generation.get(i)) {
            (Some(true), Some(&g)) if g == h.generation => Ok(()),
            _ => Err(()),
        }
    }

    fn send(&mut self, worker: usize, msg: Msg<P>) -> Result<(), ControlError> {
        self.enter();
        let pushed = if self.shared.is_closed(worker) {
            Err(ControlError::Closed)
        } else {
            self.rings[worker].push(msg).map_err(|_| ControlError::Full)
        };
        // Ends a burst under way too: its pushes are done.
        self.leave();
        pushed?;
        self.shared.ring(worker);
        Ok(())
    }
}

impl<P> Drop for Producer<P> {
    /// Wakes every worker: a stopping worker waits for its producers to be dropped.
    fn drop(&mut self) {
        // Drop the rings first (marking them abandoned), then leave the gate and ring.
        self.rings.clear();
        if self.entered {
            self.shared.gates[self.index].leave();
        }
        for w in 0..self.locals.len() {
            self.shared.ring(w);
        }
    }
}

/// A fixed 64-bit mix (splitmix64's finalizer): placement must not change between runs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
