//! Preallocated packet descriptors with intrusive singly-linked FIFOs (S13).
//!
//! Descriptors live in one `Vec` reserved at construction; the free list and every
//! per-stream FIFO thread through the descriptors' `next` index, so queueing a packet
//! never allocates. A descriptor is 24 bytes plus the embedder's handle.

/// The null index of every intrusive list.
pub(crate) const NIL: u32 = u32::MAX;

/// One queued packet: the embedder's handle, its length and its arrival time.
#[derive(Debug)]
pub(crate) struct Desc<P> {
    packet: Option<P>,
    /// Arrival time in ns while queued; the reclaim tag once dropped (see `Scheduler`).
    pub(crate) stamp: u64,
    pub(crate) len: u32,
    pub(crate) next: u32,
}

/// A FIFO of descriptors (head and tail indices, `NIL` when empty).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fifo {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl Fifo {
    pub(crate) const EMPTY: Fifo = Fifo {
        head: NIL,
        tail: NIL,
    };
}

/// The descriptor pool.
#[derive(Debug)]
pub(crate) struct Pool<P> {
    descs: Vec<Desc<P>>,
    free: u32,
    in_use: u32,
}

impl<P> Pool<P> {
    /// A pool of `capacity` descriptors, reserved now and filled lazily; `None` if the
    /// memory cannot be had.
    pub(crate) fn try_with_capacity(capacity: u32) -> Option<Self> {
        let mut descs = Vec::new();
        descs.try_reserve_exact(capacity as usize).ok()?;
        super::hugepage::advise(&descs);
        Some(Self {
            descs,
            free: NIL,
            in_use: 0,
        })
    }

    /// Descriptors currently holding a packet (queued or awaiting reclaim).
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Total descriptors the pool can hand out.
    pub(crate) fn capacity(&self) -> u32 {
        self.descs.capacity() as u32
    }

    /// Takes a descriptor for `packet`, or hands the packet back when the pool is full.
    #[inline]
    pub(crate) fn alloc(&mut self, packet: P, len: u32, stamp: u64) -> Result<u32, P> {
        let idx = if self.free != NIL {
            let idx = self.free;
            let d = &mut self.descs[idx as usize];
            self.free = d.next;
            d.packet = Some(packet);
            d.stamp = stamp;
            d.len = len;
            d.next = NIL;
            idx
        } else if self.descs.len() < self.descs.capacity() {
            // Within the reserved capacity: `push` does not reallocate.
            self.descs.push(Desc {
                packet: Some(packet),
                stamp,
                len,
                next: NIL,
            });
            (self.descs.len() - 1) as u32
        } else {
            return Err(packet);
        };
        self.in_use += 1;
        Ok(idx)
    }

    /// Returns descriptor `idx` to the free list and gives back its packet.
    #[inline]
    pub(crate) fn release(&mut self, idx: u32) -> Option<P> {
        let d = &mut self.descs[idx as usize];
        let packet = d.packet.take();
        d.next = self.free;
        self.free = idx;
        self.in_use -= 1;
        packet
    }

    /// Prefetches descriptor `idx` (any index is fine): its first and its last byte,
    /// since a descriptor need not start on a cache line (the table is aligned only to
    /// the descriptor's own alignment) and may straddle two.
    #[inline(always)]
    pub(crate) fn prefetch(&self, idx: u32) {
        let at = self.descs.as_ptr().wrapping_add(idx as usize);
        super::prefetch::prefetch(at);
        super::prefetch::prefetch(
            at.cast::<u8>()
                .wrapping_add(std::mem::size_of::<Desc<P>>() - 1),
        );
    }

    #[inline(always)]
    pub(crate) fn get(&self, idx: u32) -> &Desc<P> {
        &self.descs[idx as usize]
    }

    /// Appends descriptor `idx` to `fifo`.
    #[inline]
    pub(crate) fn push_back(&mut self, fifo: &mut Fifo, idx: u32) {
        self.descs[idx as usize].next = NIL;
        if fifo.tail == NIL {
            fifo.head = idx;
        } else {
            self.descs[fifo.tail as usize].next = idx;
        }
        fifo.tail = idx;
    }

    /// Unlinks and returns the head of `fifo` (which must not be empty).
    #[inline]
    pub(crate) fn pop_front(&mut self, fifo: &mut Fifo) -> u32 {
        let idx = fifo.head;
        fifo.head = self.descs[idx as usize].next;
        if fifo.head == NIL {
            fifo.tail = NIL;
        }
        idx
    }

    /// Unlinks the head of `fifo` (which must not be empty), frees its descriptor and
    /// returns its packet and stamp: `pop_front`, `get` and `release` in one visit.
    #[inline]
    pub(crate) fn take_front(&mut self, fifo: &mut Fifo) -> (P, u64) {
        let idx = fifo.head;
        let d = &mut self.descs[idx as usize];
        fifo.head = d.next;
        if fifo.head == NIL {
            fifo.tail = NIL;
        }
        // The stream's next packet is often the next decision's (a DRR turn spans
        // several packets): start its miss now.
        self.prefetch(fifo.head);
        let d = &mut self.descs[idx as usize];
        let packet = d
            .packet
            .take()
            .expect("a queued descriptor holds its packet");
        d.next = self.free;
        self.free = idx;
        self.in_use -= 1;
        (packet, d.stamp)
    }

    /// Rewrites descriptor `idx`'s stamp and length (a dropped packet carries its
    /// stream and drop reason there until reclaimed).
    #[inline]
    pub(crate) fn retag(&mut self, idx: u32, stamp: u64, len: u32) {
        let d = &mut self.descs[idx as usize];
        d.stamp = stamp;
        d.len = len;
    }

    /// Moves every descriptor of `from` to the back of `to`, tagging each with `stamp`
    /// and `len` (see [`Pool::retag`]). Returns how many moved. Cost is linear in the
    /// moved count (a control event).
    pub(crate) fn splice_tagged(
        &mut self,
        from: &mut Fifo,
        to: &mut Fifo,
        stamp: u64,
        len: u32,
    ) -> u32 {
        let mut moved = 0;
        let mut idx = from.head;
        while idx != NIL {
            self.retag(idx, stamp, len);
            moved += 1;
            idx = self.descs[idx as usize].next;
        }
        if from.head != NIL {
            if to.tail == NIL {
                to.head = from.head;
            } else {
                self.descs[to.tail as usize].next = from.head;
            }
            to.tail = from.tail;
        }
        *from = Fifo::EMPTY;
        moved
    }
}
