//! [`DrrFloor`]: a plain implementation of the least per-packet work of the same
//! contract, as a yardstick for the core (docs/BENCHMARKS.md, "Scheduler core against
//! its floor").
//!
//! Three tiers sharing the link 25/60/15 by start-time fair queueing (a precomputed
//! inverse of the share, no division per packet), weighted deficit round robin with a
//! new-stream list inside each tier (quantum `Q * 2^(p - base)`), per-stream FIFOs
//! threaded through a preallocated descriptor table, the handle's generation checked,
//! and the accounting the speed targets require: per-priority counters, a sojourn
//! count per packet in an HDR-shaped table, the latency budget compared. Nothing else:
//! no pacing, caps, queue-depth limit or backpressure signals, aging, AQM, per-stream
//! or per-tier counters, events, stream updates or closes; no lingering of emptied
//! streams (a stream that empties and refills comes back fresh, which S4 forbids); no
//! guard for quanta below the packets; no wrap handling of the tier tags; no
//! prefetching. It decides one packet per call, as the core does. It is a yardstick,
//! not a scheduler to use, and not a proof that nothing faster exists.

const NIL: u32 = u32::MAX;
/// The reference policy's tier of each priority (0 High, 1 Medium, 2 Low).
const TIER_OF: [usize; 8] = [2, 2, 1, 1, 1, 1, 0, 0];
/// The lowest priority of each tier.
const BASE: [u8; 3] = [6, 2, 0];
/// Tier shares in percent.
const SHARE: [u64; 3] = [25, 60, 15];
/// `2^32 / share`: a tier's tag advances by `len * INV` (no division per packet).
const INV: [u64; 3] = [
    (1 << 32) / SHARE[0],
    (1 << 32) / SHARE[1],
    (1 << 32) / SHARE[2],
];
/// Latency budgets of the reference policy, ns (`u64::MAX`: best effort).
const BUDGET: [u64; 8] = [
    u64::MAX,
    u64::MAX,
    100_000_000,
    100_000_000,
    50_000_000,
    50_000_000,
    20_000_000,
    10_000_000,
];
const QUANTUM: i32 = 1514;
/// Sojourn table: HDR's layout at 3 significant digits (2048 sub-buckets first, 1024
/// per doubling after), 40 doublings.
const HALF_MAG: u32 = 10;
const FIRST: u64 = 2 << HALF_MAG;
const BUCKETS: usize = 40 << HALF_MAG;

struct Desc<P> {
    packet: Option<P>,
    stamp: u64,
    len: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct Stream {
    head: u32,
    tail: u32,
    next: u32,
    deficit: i32,
    quantum: i32,
    len: u32,
    generation: u32,
    prio: u8,
    listed: bool,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    fn push(&mut self, streams: &mut [Stream], s: u32) {
        streams[s as usize].next = NIL;
        if self.tail == NIL {
            self.head = s;
        } else {
            streams[self.tail as usize].next = s;
        }
        self.tail = s;
    }

    fn pop(&mut self, streams: &[Stream]) -> u32 {
        let s = self.head;
        self.head = streams[s as usize].next;
        if self.head == NIL {
            self.tail = NIL;
        }
        s
    }
}

#[derive(Clone, Copy)]
struct Tier {
    fresh: List,
    round: List,
    tag: u64,
    queued: u32,
}

/// Per-priority counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloorCounters {
    /// Packets accepted.
    pub enqueued: u64,
    /// Packets sent.
    pub dequeued: u64,
    /// Bytes sent.
    pub dequeued_bytes: u64,
    /// Packets queued now.
    pub queued: u64,
    /// Packets sent after their latency budget.
    pub over_budget: u64,
}

/// The floor scheduler (see the module docs).
pub struct DrrFloor<P> {
    streams: Vec<Stream>,
    descs: Vec<Desc<P>>,
    free: u32,
    tiers: [Tier; 3],
    /// Tiers holding packets, a bit each.
    busy: u32,
    vtime: u64,
    counters: [FloorCounters; 8],
    sojourns: Vec<u64>,
}

impl<P> std::fmt::Debug for DrrFloor<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrrFloor")
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Index of the sojourn bucket of `value` ns (the last one past the table).
fn bucket(value: u64) -> usize {
    let b = (63 - (value | (FIRST - 1)).leading_zeros()) - HALF_MAG;
    let i = ((b as u64) << HALF_MAG) as usize + (value >> b) as usize;
    i.min(BUCKETS - 1)
}

impl<P> DrrFloor<P> {
    /// Room for `max_packets` queued packets.
    pub fn new(max_packets: u32) -> Self {
        let descs = (0..max_packets)
            .map(|i| Desc {
                packet: None,
                stamp: 0,
                len: 0,
                next: if i + 1 < max_packets { i + 1 } else { NIL },
            })
            .collect();
        Self {
            streams: Vec::new(),
            descs,
            free: if max_packets > 0 { 0 } else { NIL },
            tiers: [Tier {
                fresh: List::EMPTY,
                round: List::EMPTY,
                tag: 0,
                queued: 0,
            }; 3],
            busy: 0,
            vtime: 0,
            counters: [FloorCounters::default(); 8],
            sojourns: vec![0; 8 * BUCKETS],
        }
    }

    /// Opens a stream at `priority` (0..=7); its handle is `index | 1 << 32`.
    pub fn open(&mut self, priority: u8) -> u64 {
        let prio = priority & 7;
        let shift = prio - BASE[TIER_OF[usize::from(prio)]];
        self.streams.push(Stream {
            head: NIL,
            tail: NIL,
            next: NIL,
            deficit: 0,
            quantum: QUANTUM << shift,
            len: 0,
            generation: 1,
            prio,
            listed: false,
        });
        (self.streams.len() - 1) as u64 | 1 << 32
    }

    /// Queues `packet` (`len` bytes) on stream `id` at `now`; hands it back if the
    /// handle is stale, the length out of range or the table full.
    pub fn enqueue(&mut self, now: u64, id: u64, packet: P, len: u32) -> Result<(), P> {
        let s = id as u32;
        let Some(st) = self.streams.get(s as usize) else {
            return Err(packet);
        };
        if st.generation != (id >> 32) as u32 || len == 0 || len > 9216 || self.free == NIL {
            return Err(packet);
        }
        let d = self.free;
        let desc = &mut self.descs[d as usize];
        self.free = desc.next;
        *desc = Desc {
            packet: Some(packet),
            stamp: now,
            len,
            next: NIL,
        };
        let st = &mut self.streams[s as usize];
        if st.tail == NIL {
            st.head = d;
        } else {
            self.descs[st.tail as usize].next = d;
        }
        st.tail = d;
        st.len += 1;
        let prio = usize::from(st.prio);
        let t = TIER_OF[prio];
        if !st.listed {
            st.listed = true;
            st.deficit = st.quantum;
            self.tiers[t].fresh.push(&mut self.streams, s);
        }
        let tier = &mut self.tiers[t];
        if tier.queued == 0 {
            tier.tag = tier.tag.max(self.vtime);
            self.busy |= 1 << t;
        }
        tier.queued += 1;
        let c = &mut self.counters[prio];
        c.enqueued += 1;
        c.queued += 1;
        Ok(())
    }

    /// The next packet at `now`: `(stream index, packet, len, sojourn ns)`.
    pub fn dequeue(&mut self, now: u64) -> Option<(u32, P, u32, u64)> {
        if self.busy == 0 {
            return None;
        }
        let mut t = self.busy.trailing_zeros() as usize;
        let mut others = self.busy & (self.busy - 1);
        while others != 0 {
            let u = others.trailing_zeros() as usize;
            others &= others - 1;
            if self.tiers[u].tag < self.tiers[t].tag {
                t = u;
            }
        }
        loop {
            let tier = &self.tiers[t];
            let fresh = tier.fresh.head != NIL;
            let s = if fresh {
                tier.fresh.head
            } else {
                tier.round.head
            };
            let st = &mut self.streams[s as usize];
            if st.deficit <= 0 {
                // Its turn is over: a new quantum at the round's tail.
                st.deficit += st.quantum;
                let tier = &mut self.tiers[t];
                let list = if fresh {
                    &mut tier.fresh
                } else {
                    &mut tier.round
                };
                let s = list.pop(&self.streams);
                tier.round.push(&mut self.streams, s);
                continue;
            }
            let d = st.head;
            let desc = &mut self.descs[d as usize];
            st.head = desc.next;
            if st.head == NIL {
                st.tail = NIL;
            }
            let packet = desc
                .packet
                .take()
                .expect("a queued descriptor holds its packet");
            let (stamp, len) = (desc.stamp, desc.len);
            desc.next = self.free;
            self.free = d;
            st.len -= 1;
            st.deficit -= len as i32;
            let prio = usize::from(st.prio);
            if st.len == 0 {
                st.listed = false;
                let tier = &mut self.tiers[t];
                let list = if fresh {
                    &mut tier.fresh
                } else {
                    &mut tier.round
                };
                list.pop(&self.streams);
            }
            let tier = &mut self.tiers[t];
            self.vtime = tier.tag;
            tier.tag += u64::from(len) * INV[t];
            tier.queued -= 1;
            if tier.queued == 0 {
                self.busy &= !(1 << t);
            }
            let sojourn = now.saturating_sub(stamp);
            let c = &mut self.counters[prio];
            c.dequeued += 1;
            c.dequeued_bytes += u64::from(len);
            c.queued -= 1;
            c.over_budget += u64::from(sojourn > BUDGET[prio]);
            self.sojourns[prio * BUCKETS + bucket(sojourn)] += 1;
            return Some((s, packet, len, sojourn));
        }
    }

    /// Priority `p`'s counters.
    pub fn counters(&self, p: u8) -> FloorCounters {
        self.counters[usize::from(p & 7)]
    }

    /// Sojourn samples counted for priority `p`.
    pub fn sojourn_samples(&self, p: u8) -> u64 {
        let p = usize::from(p & 7);
        self.sojourns[p * BUCKETS..(p + 1) * BUCKETS].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor's tables are the reference policy's.
    #[test]
    fn floor_constants_are_the_reference_policy() {
        let policy = qos_dataplane::sched::Policy::default();
        let spec = policy.spec();
        for p in 0..8u8 {
            let t = policy.tier_of(p);
            assert_eq!(TIER_OF[usize::from(p)], t, "P{p}");
            assert_eq!(BASE[t], *spec.tiers[t].priorities.iter().min().unwrap());
            assert_eq!(SHARE[t], u64::from(spec.tiers[t].share_percent));
            assert_eq!(
                BUDGET[usize::from(p)],
                spec.latency_budget_ns[usize::from(p)].unwrap_or(u64::MAX)
            );
        }
        assert_eq!(QUANTUM as u32, spec.quantum_bytes);
    }

    /// The floor keeps the contract it stands for: tier shares 25/60/15, weight
    /// `2^priority` inside a tier, and every accepted packet counted and sent once.
    #[test]
    fn floor_shares_tiers_and_weights_and_counts_every_packet() {
        let mut f = DrrFloor::new(64_000);
        let ids: Vec<u64> = (0..8).map(|p| f.open(p)).collect();
        for k in 0..8_000u32 {
            for &id in &ids {
                f.enqueue(0, id, k, 1_000).expect("room");
            }
        }
        let mut bytes = [0u64; 8];
        for _ in 0..16_000 {
            let (s, _, len, _) = f.dequeue(5).expect("backlogged");
            bytes[s as usize] += u64::from(len);
        }
        let total: u64 = bytes.iter().sum();
        let share = |p: usize| bytes[p] as f64 / total as f64;
        // High: P6 1/3 and P7 2/3 of 25%; Medium: P2..P5 1:2:4:8 of 60%; Low: 1:2 of 15%.
        let want = [0.05, 0.10, 0.04, 0.08, 0.16, 0.32, 0.25 / 3.0, 0.5 / 3.0];
        for (p, w) in want.iter().enumerate() {
            assert!(
                (share(p) - w).abs() < 0.01,
                "P{p}: {:.4} of the link, want {w:.4}",
                share(p)
            );
        }
        let mut left = 0;
        while f.dequeue(5).is_some() {
            left += 1;
        }
        assert_eq!(left, 64_000 - 16_000);
        for p in 0..8 {
            let c = f.counters(p);
            assert_eq!((c.enqueued, c.dequeued, c.queued), (8_000, 8_000, 0));
            assert_eq!(f.sojourn_samples(p), 8_000);
        }
        assert!(f.enqueue(0, 9 | 1 << 32, 0, 100).is_err(), "unknown stream");
        assert!(
            f.enqueue(0, 1 | 2 << 32, 0, 100).is_err(),
            "stale generation"
        );
    }
}
