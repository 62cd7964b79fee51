//! The reading half.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{CorruptError, PopError, RecordError, RegionError, Role};
use crate::layout::Geometry;
use crate::region::Shared;
use crate::side::{self, PeerStatus};
use crate::sync::Ordering;

const ROLE: Role = Role::Consumer;

/// The reading half of a ring. `Send` but not `Sync` and not `Clone`: exactly one thread
/// of one process reads (STYLE 7). Records are copied out into caller buffers; no
/// reference into the shared slots is ever handed out.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    geom: Geometry,
    /// Our index: records released so far. Authoritative here, never re-read from the
    /// region. Range: `head <= cached_tail <= head + capacity`.
    head: u64,
    /// Last validated producer index. Only grows; refreshed only when the cached value
    /// shows too few records.
    cached_tail: u64,
    rejected: u64,
    heartbeat: u64,
    poison: Option<CorruptError>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Consumer {
    pub(crate) fn claim(shared: Arc<Shared>) -> Result<Self, RegionError> {
        let geom = shared.geometry();
        side::claim(shared.header(), ROLE)?;
        let hdr = shared.header();
        // Acquire (both): partners are the Release index stores of each side (the
        // producer may have committed records before we attached).
        let head = hdr.consumer.index.load(Ordering::Acquire);
        let tail = hdr.producer.index.load(Ordering::Acquire);
        check_tail(head, head, tail, geom.capacity)?;
        Ok(Self {
            shared,
            geom,
            head,
            cached_tail: tail,
            rejected: 0,
            heartbeat: 0,
            poison: None,
            _not_sync: PhantomData,
        })
    }

    /// Largest record this ring carries, in bytes: a buffer this long always fits.
    pub fn max_record(&self) -> usize {
        self.geom.max_record
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.geom.capacity as usize
    }

    /// Records consumed whose length word exceeded the slot (see [`RecordError::TooLong`]).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Committed records according to the cached producer index (no shared-memory
    /// access): a lower bound of the true number.
    pub fn cached_available(&self) -> usize {
        (self.cached_tail - self.head) as usize
    }

    /// Copies the next record into `buf` and releases its slot; returns its length.
    ///
    /// # Errors
    /// [`PopError::Empty`] (or [`PopError::Disconnected`] once the producer is gone and
    /// everything it committed was read); [`PopError::Record`] with
    /// [`RecordError::BufferTooSmall`] (record kept) or [`RecordError::TooLong`] (record
    /// consumed and counted in [`Consumer::rejected`]); [`PopError::Corrupt`] if the
    /// producer published an impossible index.
    #[inline]
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<usize, PopError> {
        self.check_poison()?;
        if self.cached_tail == self.head {
            self.refresh_nonempty()?;
        }
        let result = self.read_slot(self.head, buf);
        if !matches!(result, Err(RecordError::BufferTooSmall { .. })) {
            self.publish(self.head + 1);
        }
        result.map_err(PopError::Record)
    }

    /// Opens a batch of up to `max` committed records, refreshing the producer index
    /// only if the cached one shows fewer than `max`. Records taken from the batch with
    /// [`ReadBatch::next_into`] are freed together on [`ReadBatch::release`]; dropping the
    /// batch frees nothing (the records will be read again). `read(0)` returns an empty
    /// batch.
    ///
    /// # Errors
    /// [`PopError::Empty`] or [`PopError::Disconnected`] when no record is committed;
    /// [`PopError::Corrupt`] as for [`Consumer::pop`].
    pub fn read(&mut self, max: usize) -> Result<ReadBatch<'_>, PopError> {
        self.check_poison()?;
        let mut available = self.cached_tail - self.head;
        if available < max as u64 && max > 0 {
            available = match self.refresh_nonempty() {
                Ok(n) => n,
                Err(PopError::Empty | PopError::Disconnected) if available > 0 => available,
                Err(e) => return Err(e),
            };
        }
        Ok(ReadBatch {
            available: available.min(max as u64),
            taken: 0,
            consumer: self,
        })
    }

    /// Bumps this side's heartbeat counter (see [`crate::Producer::peer_heartbeat`]).
    pub fn heartbeat(&mut self) {
        self.heartbeat += 1;
        side::beat(self.shared.header(), ROLE, self.heartbeat);
    }

    /// The producer's heartbeat counter. A counter that stops moving while the status
    /// stays [`PeerStatus::Alive`] means a stalled (or hostile) producer.
    pub fn peer_heartbeat(&self) -> u64 {
        side::peer_heartbeat(self.shared.header(), ROLE)
    }

    /// The producer's status: attached, abandoned, or its process gone. After
    /// [`PeerStatus::Abandoned`] or [`PeerStatus::Gone`], keep popping until
    /// [`PopError::Empty`]/[`PopError::Disconnected`] to drain what was committed.
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

    fn check_poison(&self) -> Result<(), PopError> {
        match self.poison {
            Some(e) => Err(PopError::Corrupt(e)),
            None => Ok(()),
        }
    }

    /// Re-reads the producer index; returns the committed records, or `Empty` /
    /// `Disconnected` if there are none.
    #[cold]
    fn refresh_nonempty(&mut self) -> Result<u64, PopError> {
        let n = self.refresh_available()?;
        if n > 0 {
            return Ok(n);
        }
        if !side::peer_abandoned(self.shared.header(), ROLE) {
            return Err(PopError::Empty);
        }
        // The producer is gone; its final tail store happened before its abandon flag
        // (which we just loaded with Acquire), so this re-read sees every commit.
        match self.refresh_available()? {
            0 => Err(PopError::Disconnected),
            n => Ok(n),
        }
    }

    /// Re-reads the producer index and validates it; returns the committed records.
    fn refresh_available(&mut self) -> Result<u64, PopError> {
        // Acquire: partner is the producer's Release store of `tail` (Producer::publish),
        // so the slot words it wrote before are visible to our reads.
        let tail = self.shared.header().producer.index.load(Ordering::Acquire);
        if let Err(e) = check_tail(self.cached_tail, self.head, tail, self.geom.capacity) {
            self.poison = Some(e);
            return Err(PopError::Corrupt(e));
        }
        self.cached_tail = tail;
        Ok(tail - self.head)
    }

    #[inline(always)]
    fn read_slot(&mut self, index: u64, buf: &mut [u8]) -> Result<usize, RecordError> {
        let base = self.geom.slot_base(index);
        let slots = self.shared.slots();
        let Some(slot) = slots.get(base..base + self.geom.slot_words) else {
            return Err(RecordError::TooLong { len: 0, max: 0 });
        };
        let result = side::read_record(slot, buf);
        if let Err(RecordError::TooLong { .. }) = result {
            self.rejected += 1;
        }
        result
    }

    #[inline(always)]
    fn publish(&mut self, head: u64) {
        debug_assert!(head >= self.head && head <= self.cached_tail);
        self.head = head;
        // Release: our reads of the freed slots happen before this store; partner: the
        // producer's Acquire load of `head` (Producer::refresh_free) before it reuses them.
        self.shared
            .header()
            .consumer
            .index
            .store(head, Ordering::Release);
    }
}

/// Checks a producer index read from the region: it may only grow (`was <= tail`) and
/// can never be more than `capacity` ahead of what we released.
fn check_tail(was: u64, head: u64, tail: u64, capacity: u64) -> Result<(), CorruptError> {
    if tail < was {
        return Err(CorruptError::IndexBackwards {
            field: "tail",
            was,
            now: tail,
        });
    }
    let limit = head.saturating_add(capacity);
    if tail > limit {
        return Err(CorruptError::IndexAhead {
            field: "tail",
            now: tail,
            limit,
        });
    }
    Ok(())
}

impl Drop for Consumer {
    fn drop(&mut self) {
        side::abandon(self.shared.header(), ROLE);
    }
}

/// Committed records opened by [`Consumer::read`]: copy them out one by one with
/// [`ReadBatch::next_into`], then free their slots with [`ReadBatch::release`].
#[derive(Debug)]
pub struct ReadBatch<'a> {
    consumer: &'a mut Consumer,
    available: u64,
    taken: u64,
}

impl ReadBatch<'_> {
    /// Records in the batch not yet taken.
    pub fn len(&self) -> usize {
        (self.available - self.taken) as usize
    }

    /// Whether every record of the batch was taken (or there was none).
    pub fn is_empty(&self) -> bool {
        self.available == self.taken
    }

    /// Records taken so far (what [`ReadBatch::release`] will free).
    pub fn taken(&self) -> usize {
        self.taken as usize
    }

    /// Copies the next record of the batch into `buf`; `None` at the end of the batch.
    /// A record whose length word exceeds the slot is taken, counted in
    /// [`Consumer::rejected`] and reported as [`RecordError::TooLong`]; one that does not
    /// fit `buf` is left in place ([`RecordError::BufferTooSmall`]).
    #[inline]
    pub fn next_into(&mut self, buf: &mut [u8]) -> Option<Result<usize, RecordError>> {
        if self.taken == self.available {
            return None;
        }
        let index = self.consumer.head + self.taken;
        let result = self.consumer.read_slot(index, buf);
        if !matches!(result, Err(RecordError::BufferTooSmall { .. })) {
            self.taken += 1;
        }
        Some(result)
    }

    /// Frees the slots of every record taken, with one index store; returns how many.
    /// Releasing an empty batch touches nothing.
    pub fn release(self) -> usize {
        if self.taken > 0 {
            let head = self.consumer.head + self.taken;
            self.consumer.publish(head);
        }
        self.taken as usize
    }
}
