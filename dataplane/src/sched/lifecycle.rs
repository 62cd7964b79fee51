//! Stream lifecycle: open, update, close, reopen, and the drops they cause.
//!
//! Slot states move `Free -> Open -> (Disconnected ->) Free`; every transition is a
//! method here. Handles carry a 24-bit generation; the free list is FIFO, and a slot
//! whose generation is exhausted is retired instead of reused, so a handle never names
//! a later stream.

use super::Scheduler;
use super::pool::NIL;
use super::stats::DropReason;
use super::stream::{
    Flags, GENERATION_MASK, NIL16, SlotState, Stream, StreamConfig, StreamId, StreamStats,
};
use super::types::StreamError;

impl<P> Scheduler<P> {
    /// Opens a stream. Allocates only to grow the cap table for a capped stream.
    pub fn open(&mut self, config: StreamConfig) -> Result<StreamId, StreamError> {
        Self::check_config(&config)?;
        let cap = match config.cap {
            Some(spec) => Some(self.cap_bucket(spec)?),
            None => None,
        };
        let s = self.take_slot()?;
        let cap = match cap {
            Some((spec, bucket)) => match self.caps.alloc(spec, bucket) {
                Ok(i) => i,
                Err(e) => {
                    self.put_slot(s);
                    return Err(e);
                }
            },
            None => NIL16,
        };
        let generation = (self.streams[s as usize].generation() + 1) & GENERATION_MASK;
        let prio = config.priority;
        let weight = config.weight.unwrap_or(prio.default_weight());
        self.streams[s as usize] =
            Stream::opened(generation, prio.get(), weight, config.weight.is_some(), cap);
        self.open_streams += 1;
        Ok(StreamId::new(s, generation))
    }

    /// A free slot: the oldest freed one (FIFO, so handles age before reuse), or a new
    /// one within the reserved table.
    fn take_slot(&mut self) -> Result<u32, StreamError> {
        if self.free_streams.head != NIL {
            let s = self.free_streams.head;
            self.free_streams.head = self.streams[s as usize].next;
            if self.free_streams.head == NIL {
                self.free_streams.tail = NIL;
            }
            return Ok(s);
        }
        if self.streams.len() < self.streams.capacity() {
            // Within the reserved capacity: `push` does not reallocate.
            self.streams.push(Stream::VACANT);
            return Ok((self.streams.len() - 1) as u32);
        }
        Err(StreamError::TableFull(self.streams.capacity() as u32))
    }

    /// Returns slot `s` to the back of the free list, or retires it once its
    /// generation is exhausted.
    fn put_slot(&mut self, s: u32) {
        let st = &mut self.streams[s as usize];
        st.next = NIL;
        if st.generation() == GENERATION_MASK {
            self.retired_slots += 1;
            return;
        }
        if self.free_streams.tail == NIL {
            self.free_streams.head = s;
        } else {
            self.streams[self.free_streams.tail as usize].next = s;
        }
        self.free_streams.tail = s;
    }

    fn check_config(config: &StreamConfig) -> Result<(), StreamError> {
        config.check()
    }

    /// Index of the open (or disconnected) stream `id` names.
    pub(super) fn lookup(&self, id: StreamId) -> Result<usize, StreamError> {
        let s = id.index() as usize;
        match self.streams.get(s) {
            Some(st) if st.generation() == id.generation() && st.state() != SlotState::Free => {
                Ok(s)
            }
            Some(st) if st.generation() == id.generation() => Err(StreamError::Closed(id)),
            _ => Err(StreamError::Unknown(id)),
        }
    }

    /// Takes stream `s` out of service (off its list or the wheel, out of the aging
    /// lane); its queue stays. The inverse is [`Scheduler::reinstate`].
    fn withdraw(&mut self, s: usize) {
        let st = &self.streams[s];
        if st.has(Flags::LISTED) {
            self.wfq.unlink(&mut self.streams, s as u32);
        } else if st.has(Flags::THROTTLED) {
            self.unpark(s as u32);
        } else {
            // A lingering mark refers to the class it may be leaving.
            self.streams[s].clear_linger();
        }
        self.streams[s].clear(Flags::PROMOTED);
    }

    /// Puts a withdrawn stream with a queue back into service: at the tail of its
    /// class's round with the credit it had (at most one quantum), so being moved never
    /// earns a fresh quantum ahead of the round.
    fn reinstate(&mut self, s: usize) {
        if self.streams[s].len > 0 {
            self.wfq.relink(&mut self.streams, s as u32);
        }
    }

    /// Changes priority, weight or cap of an open stream; takes effect at the next
    /// decision. Queued packets move with the stream (counted as `moved_*`).
    pub fn update(&mut self, id: StreamId, config: StreamConfig) -> Result<(), StreamError> {
        let s = self.lookup(id)?;
        if self.streams[s].state() == SlotState::Disconnected {
            return Err(StreamError::Disconnected(id));
        }
        Self::check_config(&config)?;
        let new_cap = match config.cap {
            Some(spec) => Some(self.cap_bucket(spec)?),
            None => None,
        };
        let old = self.streams[s];
        let cap = match (new_cap, old.cap) {
            (Some((spec, bucket)), NIL16) => self.caps.alloc(spec, bucket)?,
            (Some((spec, _)), i) => {
                // Keep the tokens held: re-applying a cap must not refill it (S6).
                let burst = self.cap_burst(spec);
                let slot = &mut self.caps.slots[usize::from(i)];
                slot.bucket.reconfigure(spec.rate_bps, burst, self.now);
                slot.spec = spec;
                i
            }
            (None, i) => i,
        };
        let prio = config.priority;
        // A listed stream that stays in its class keeps its place in the round and its
        // credit (S3/S4: re-applying a config must not move it ahead of the others).
        let in_place = old.has(Flags::LISTED)
            && !old.has(Flags::PROMOTED)
            && self.wfq.tier_of(old.prio()) == self.wfq.tier_of(prio.get());
        if !in_place {
            self.withdraw(s);
        }
        if config.cap.is_none() {
            self.caps.free(old.cap);
        }
        if old.prio() != prio.get() && old.len > 0 {
            let n = u64::from(old.len);
            let from = &mut self.prio_stats[usize::from(old.prio())];
            from.queued -= n;
            from.moved_out += n;
            let to = &mut self.prio_stats[prio.index()];
            to.queued += n;
            to.moved_in += n;
        }
        let st = &mut self.streams[s];
        st.set_prio(prio.get());
        st.weight = config.weight.unwrap_or(prio.default_weight());
        st.clear(Flags::WEIGHT_SET);
        if config.weight.is_some() {
            st.set(Flags::WEIGHT_SET);
        }
        st.cap = if config.cap.is_some() { cap } else { NIL16 };
        if in_place {
            let c = self.wfq.class_of(st);
            let q = self.wfq.quantum_of(c, st.weight);
            st.deficit = st.deficit.min(q);
        } else {
            self.reinstate(s);
        }
        Ok(())
    }

    /// Closes a stream. Queued packets are dropped with reason `closed` and handed back
    /// through [`Scheduler::pop_reclaimed`]. Returns the stream's final counters.
    pub fn close(&mut self, id: StreamId) -> Result<StreamStats, StreamError> {
        let s = self.lookup(id)?;
        let was_open = self.streams[s].state() == SlotState::Open;
        if was_open {
            self.drop_queue(s, DropReason::Closed);
        }
        let stats = StreamStats::of(&self.streams[s], was_open);
        self.caps.free(self.streams[s].cap);
        let st = &mut self.streams[s];
        st.set_state(SlotState::Free);
        st.cap = NIL16;
        self.put_slot(s as u32);
        self.open_streams -= 1;
        Ok(stats)
    }

    /// Reopens a disconnected stream with its previous priority, weight and cap, under
    /// a new handle with fresh counters (the old ones stay in the priority counters).
    pub fn reopen(&mut self, id: StreamId) -> Result<StreamId, StreamError> {
        let s = self.lookup(id)?;
        let st = self.streams[s];
        if st.state() != SlotState::Disconnected {
            return Err(StreamError::NotDisconnected(id));
        }
        let config = StreamConfig {
            priority: super::Priority::saturating(st.prio()),
            weight: st.has(Flags::WEIGHT_SET).then_some(st.weight),
            cap: (st.cap != NIL16).then(|| self.caps.slots[usize::from(st.cap)].spec),
        };
        // Validate against the current policy first: a failed reopen leaves the stream
        // as it was (disconnected), not closed.
        Self::check_config(&config)?;
        if let Some(spec) = config.cap {
            self.cap_bucket(spec)?;
        }
        self.close(id)?;
        self.open(config)
    }

    /// Counters of a stream, or `None` if the handle names no open stream.
    pub fn stream_stats(&self, id: StreamId) -> Option<StreamStats> {
        self.lookup(id)
            .ok()
            .map(|s| StreamStats::of(&self.streams[s], false))
    }

    /// The priority of an open stream, or `None` if the handle names none.
    #[inline]
    pub fn stream_priority(&self, id: StreamId) -> Option<super::Priority> {
        self.lookup(id)
            .ok()
            .map(|s| super::Priority::saturating(self.streams[s].prio()))
    }

    /// Slots ever used (open, disconnected or free again): the bound of
    /// [`Scheduler::stream_at`]'s index. Grows up to `max_streams`, never shrinks.
    pub fn stream_slots(&self) -> usize {
        self.streams.len()
    }

    /// The stream in slot `index` and its counters, if a stream is open (or
    /// disconnected) there. For reports that walk every stream a bounded number of
    /// slots at a time (the runtime's per-stream report does).
    pub fn stream_at(&self, index: usize) -> Option<(StreamId, StreamStats)> {
        let st = self.streams.get(index)?;
        if st.state() == SlotState::Free {
            return None;
        }
        let id = StreamId::new(index as u32, st.generation());
        Some((id, StreamStats::of(st, false)))
    }

    /// Moves every queued packet of stream `s` to the reclaim list, dropped for `reason`
    /// (a terminal event: afterwards the slot's credit field holds the count).
    pub(super) fn drop_queue(&mut self, s: usize, reason: DropReason) -> u32 {
        self.withdraw(s);
        let st = &mut self.streams[s];
        st.clear(Flags::WARNED);
        super::hot::reset_codel(st);
        let tag = StreamId::new(s as u32, st.generation()).to_raw();
        let n =
            self.pool
                .splice_tagged(&mut st.fifo, &mut self.reclaim, tag, reason.index() as u32);
        st.len = 0;
        st.deficit = n as i32;
        let ps = &mut self.prio_stats[usize::from(st.prio())];
        ps.queued -= u64::from(n);
        ps.dropped[reason.index()] += u64::from(n);
        self.reclaim_len += u64::from(n);
        n
    }
}
