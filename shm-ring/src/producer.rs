//! The writing half.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{CorruptError, PushError, RegionError, Role};
use crate::layout::{Geometry, MAX_CLAIM_INDEX};
use crate::region::Shared;
use crate::side::{self, PeerStatus};
use crate::sync::Ordering;

const ROLE: Role = Role::Producer;

/// The writing half of a ring. `Send` but not `Sync` and not `Clone`: exactly one thread
/// of one process writes (STYLE 7). Dropping it marks the producer side abandoned; the
/// consumer can still drain every committed record.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    geom: Geometry,
    /// Our index: records committed so far. Authoritative here, never re-read from the
    /// region. Range: `cached_head <= tail <= cached_head + capacity`.
    tail: u64,
    /// Last validated consumer index. Only grows; refreshed only when the cached value
    /// shows too little room.
    cached_head: u64,
    heartbeat: u64,
    poison: Option<CorruptError>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Producer {
    pub(crate) fn claim(shared: Arc<Shared>) -> Result<Self, RegionError> {
        let geom = shared.geometry();
        side::claim(shared.header(), ROLE)?;
        let hdr = shared.header();
        // Acquire (both): partners are the Release index stores of a previous run of the
        // protocol on this region (normally none: both read 0).
        let tail = hdr.producer.index.load(Ordering::Acquire);
        let head = hdr.consumer.index.load(Ordering::Acquire);
        check_head(head, head, tail, geom.capacity)?;
        if tail > MAX_CLAIM_INDEX {
            // Only a peer writes such an index: ours would overflow within a few pushes.
            return Err(CorruptError::IndexAhead {
                field: "tail",
                now: tail,
                limit: MAX_CLAIM_INDEX,
            }
            .into());
        }
        Ok(Self {
            shared,
            geom,
            tail,
            cached_head: head,
            heartbeat: 0,
            poison: None,
            _not_sync: PhantomData,
        })
    }

    /// Largest record this ring carries, in bytes.
    pub fn max_record(&self) -> usize {
        self.geom.max_record
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.geom.capacity as usize
    }

    /// Free slots according to the cached consumer index (no shared-memory access):
    /// a lower bound of the true number.
    pub fn cached_free(&self) -> usize {
        (self.geom.capacity - (self.tail - self.cached_head)) as usize
    }

    /// Copies `record` into the next slot and commits it.
    ///
    /// # Errors
    /// [`PushError::TooLong`] if `record` exceeds [`Producer::max_record`];
    /// [`PushError::Full`] (or [`PushError::Disconnected`] when the consumer is gone);
    /// [`PushError::Corrupt`] if the consumer published an impossible index.
    #[inline]
    pub fn push(&mut self, record: &[u8]) -> Result<(), PushError> {
        self.check_poison()?;
        if record.len() > self.geom.max_record {
            return Err(PushError::TooLong {
                len: record.len(),
                max: self.geom.max_record,
            });
        }
        if self.tail - self.cached_head == self.geom.capacity && self.refresh_free()? == 0 {
            return Err(self.full_error());
        }
        self.write_slot(self.tail, record);
        self.publish(self.tail + 1);
        Ok(())
    }

    /// Reserves up to `n` free slots for a batch of records, refreshing the consumer
    /// index only if the cached one shows fewer than `n`. Records written into the batch
    /// become visible together on [`WriteBatch::commit`]; dropping the batch discards
    /// them. `reserve(0)` returns an empty batch.
    ///
    /// # Errors
    /// [`PushError::Full`] or [`PushError::Disconnected`] when no slot is free;
    /// [`PushError::Corrupt`] as for [`Producer::push`].
    pub fn reserve(&mut self, n: usize) -> Result<WriteBatch<'_>, PushError> {
        self.check_poison()?;
        let mut free = self.cached_free() as u64;
        if free < n as u64 {
            free = self.refresh_free()?;
            if free == 0 && n > 0 {
                return Err(self.full_error());
            }
        }
        let reserved = free.min(n as u64);
        Ok(WriteBatch {
            producer: self,
            reserved,
            written: 0,
        })
    }

    /// Bumps this side's heartbeat counter, for a consumer that watches liveness with
    /// [`crate::Consumer::peer_heartbeat`]. Call it from the producer's loop, idle or not.
    pub fn heartbeat(&mut self) {
        self.heartbeat += 1;
        side::beat(self.shared.header(), ROLE, self.heartbeat);
    }

    /// The consumer's heartbeat counter (see [`crate::Consumer::heartbeat`]).
    pub fn peer_heartbeat(&self) -> u64 {
        side::peer_heartbeat(self.shared.header(), ROLE)
    }

    /// The consumer's status: attached, abandoned, or its process gone.
    pub fn peer_status(&self) -> PeerStatus {
        side::peer_status(self.shared.header(), ROLE)
    }

    /// The corruption that poisoned this half, if any.
    pub fn poisoned(&self) -> Option<CorruptError> {
        self.poison
    }

    /// Re-reads the header's write-once fields to report tampering (see
    /// [`crate::ShmRegion::verify_header`]).
    ///
    /// # Errors
    /// The first field that differs from the value validated at attach time.
    pub fn verify_header(&self) -> Result<(), RegionError> {
        self.shared.verify_header()
    }

    fn check_poison(&self) -> Result<(), PushError> {
        match self.poison {
            Some(e) => Err(PushError::Corrupt(e)),
            None => Ok(()),
        }
    }

    /// Re-reads the consumer index and validates it; returns the free slots.
    #[cold]
    fn refresh_free(&mut self) -> Result<u64, PushError> {
        // Acquire: partner is the consumer's Release store of `head` (Consumer::publish),
        // so its reads of the slots it freed happen before we overwrite them.
        let head = self.shared.header().consumer.index.load(Ordering::Acquire);
        if let Err(e) = check_head(self.cached_head, head, self.tail, self.geom.capacity) {
            self.poison = Some(e);
            return Err(PushError::Corrupt(e));
        }
        self.cached_head = head;
        Ok(self.cached_free() as u64)
    }

    #[cold]
    fn full_error(&self) -> PushError {
        if side::peer_abandoned(self.shared.header(), ROLE) {
            PushError::Disconnected
        } else {
            PushError::Full
        }
    }

    #[inline(always)]
    fn write_slot(&self, index: u64, record: &[u8]) {
        let base = self.geom.slot_base(index);
        let slots = self.shared.slots();
        if let Some(slot) = slots.get(base..base + self.geom.slot_words) {
            side::write_record(slot, record);
        }
    }

    #[inline(always)]
    fn publish(&mut self, tail: u64) {
        debug_assert!(tail >= self.tail && tail - self.cached_head <= self.geom.capacity);
        self.tail = tail;
        // Release: publishes the slot words written before; partner: the consumer's
        // Acquire load of `tail` (Consumer::refresh_available).
        self.shared
            .header()
            .producer
            .index
            .store(tail, Ordering::Release);
    }
}

/// Checks a consumer index read from the region: it may only grow (`was <= head`) and
/// can never pass what we committed (`head <= tail`).
fn check_head(was: u64, head: u64, tail: u64, capacity: u64) -> Result<(), CorruptError> {
    if head < was {
        return Err(CorruptError::IndexBackwards {
            field: "head",
            was,
            now: head,
        });
    }
    if head > tail {
        return Err(CorruptError::IndexAhead {
            field: "head",
            now: head,
            limit: tail,
        });
    }
    if tail - head > capacity {
        // Only reachable at claim time, with a corrupt pre-existing tail.
        return Err(CorruptError::IndexAhead {
            field: "tail",
            now: tail,
            limit: head + capacity,
        });
    }
    Ok(())
}

impl Drop for Producer {
    fn drop(&mut self) {
        side::abandon(self.shared.header(), ROLE);
    }
}

/// Slots reserved by [`Producer::reserve`]: write records with [`WriteBatch::write`],
/// then publish them all at once with [`WriteBatch::commit`] (one `Release` store).
#[derive(Debug)]
pub struct WriteBatch<'a> {
    producer: &'a mut Producer,
    reserved: u64,
    written: u64,
}

impl WriteBatch<'_> {
    /// Slots reserved.
    pub fn reserved(&self) -> usize {
        self.reserved as usize
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.written as usize
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Reserved slots still free.
    pub fn remaining(&self) -> usize {
        (self.reserved - self.written) as usize
    }

    /// Copies `record` into the next reserved slot (not yet visible to the consumer).
    ///
    /// # Errors
    /// [`PushError::Full`] when every reserved slot is written;
    /// [`PushError::TooLong`] when `record` exceeds the slot.
    #[inline]
    pub fn write(&mut self, record: &[u8]) -> Result<(), PushError> {
        let max = self.producer.geom.max_record;
        if record.len() > max {
            return Err(PushError::TooLong {
                len: record.len(),
                max,
            });
        }
        if self.written == self.reserved {
            return Err(PushError::Full);
        }
        let index = self.producer.tail + self.written;
        self.producer.write_slot(index, record);
        self.written += 1;
        Ok(())
    }

    /// Publishes every record written, in order, with one index store; returns how many.
    /// Committing an empty batch touches nothing.
    pub fn commit(self) -> usize {
        if self.written > 0 {
            let tail = self.producer.tail + self.written;
            self.producer.publish(tail);
        }
        self.written as usize
    }
}
