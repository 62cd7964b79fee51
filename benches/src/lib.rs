//! Baselines the benchmarks compare against. Competitor crates are dependencies of this
//! crate only.
//!
//! [`NaiveScheduler`] is the textbook implementation the P3 target is measured
//! against: the same three-tier start-time fair queueing with weight `2^priority`
//! inside a tier, but with a binary heap of per-stream tags per tier, a `VecDeque` per
//! stream and a division per packet. It has no backpressure, caps, pacing or counters:
//! "same semantics as far as it goes".
//!
//! [`DrrFloor`] is the other yardstick: the least per-packet work of the same
//! contract (see its module).

mod floor;
pub use floor::{DrrFloor, FloorCounters};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const SCALE: u64 = 1 << 32;

struct NaiveStream<P> {
    queue: VecDeque<(P, u32)>,
    finish: u64,
    weight: u64,
    tier: usize,
}

/// Binary heap of start tags per tier + `VecDeque` per stream.
pub struct NaiveScheduler<P> {
    streams: Vec<NaiveStream<P>>,
    heaps: Vec<BinaryHeap<Reverse<(u64, u32)>>>,
    tier_tag: Vec<u64>,
    tier_share: Vec<u64>,
    tier_vtime: Vec<u64>,
    vtime: u64,
}

impl<P> std::fmt::Debug for NaiveScheduler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NaiveScheduler")
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl<P> NaiveScheduler<P> {
    /// The reference policy: priorities {6,7} / {2..5} / {0,1} at 25/60/15.
    pub fn new() -> Self {
        Self {
            streams: Vec::new(),
            heaps: (0..3).map(|_| BinaryHeap::new()).collect(),
            tier_tag: vec![0; 3],
            tier_share: vec![25, 60, 15],
            tier_vtime: vec![0; 3],
            vtime: 0,
        }
    }

    /// Opens a stream at `priority` (0..=7); returns its index.
    pub fn open(&mut self, priority: u8) -> u32 {
        let tier = match priority {
            6..=7 => 0,
            2..=5 => 1,
            _ => 2,
        };
        self.streams.push(NaiveStream {
            queue: VecDeque::new(),
            finish: 0,
            weight: 1 << priority,
            tier,
        });
        (self.streams.len() - 1) as u32
    }

    /// Queues a packet on stream `s`.
    pub fn enqueue(&mut self, s: u32, packet: P, len: u32) {
        let st = &mut self.streams[s as usize];
        st.queue.push_back((packet, len));
        if st.queue.len() == 1 {
            let t = st.tier;
            if self.heaps[t].is_empty() {
                self.tier_tag[t] = self.tier_tag[t].max(self.vtime);
            }
            let start = st.finish.max(self.tier_vtime[t]);
            self.heaps[t].push(Reverse((start, s)));
        }
    }

    /// The next packet by tier tag, then by stream start tag.
    pub fn dequeue(&mut self) -> Option<(u32, P, u32)> {
        let t = (0..self.heaps.len())
            .filter(|&t| !self.heaps[t].is_empty())
            .min_by_key(|&t| self.tier_tag[t])?;
        let Reverse((start, s)) = self.heaps[t].pop()?;
        self.vtime = self.tier_tag[t];
        self.tier_vtime[t] = start;
        let st = &mut self.streams[s as usize];
        let (packet, len) = st.queue.pop_front()?;
        st.finish = start + u64::from(len) * SCALE / st.weight;
        self.tier_tag[t] += u64::from(len) * SCALE / self.tier_share[t];
        if !st.queue.is_empty() {
            self.heaps[t].push(Reverse((st.finish, s)));
        }
        Some((s, packet, len))
    }
}

impl<P> Default for NaiveScheduler<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_baseline_shares_tiers_25_60_15() {
        let mut n = NaiveScheduler::new();
        let ids: Vec<u32> = (0..8).map(|p| n.open(p)).collect();
        for round in 0..2000u32 {
            for &s in &ids {
                n.enqueue(s, round, 1000);
            }
        }
        let mut per_tier = [0u64; 3];
        for _ in 0..8000 {
            let (s, _, len) = n.dequeue().unwrap();
            per_tier[n.streams[s as usize].tier] += u64::from(len);
        }
        let total: u64 = per_tier.iter().sum();
        for (got, want) in per_tier.iter().zip([0.25, 0.60, 0.15]) {
            assert!((*got as f64 / total as f64 - want).abs() < 0.01);
        }
    }
}

/// An egress for the runtime benchmarks: takes every packet it is offered and counts
/// each packet that ends its journey, sent or discarded (`Release`, so a bench thread
/// that reads the count with `Acquire` sees the work done).
#[derive(Debug)]
pub struct CountingEgress(pub std::sync::Arc<std::sync::atomic::AtomicU64>);

impl qos_dataplane::runtime::Egress<u64> for CountingEgress {
    fn send(&mut self, _now: u64, out: &mut qos_dataplane::runtime::Outbox<'_, u64>) {
        let mut n = 0;
        while let Some(d) = out.pop() {
            std::hint::black_box(d.packet);
            n += 1;
        }
        self.0.fetch_add(n, std::sync::atomic::Ordering::Release);
    }

    /// A packet the dataplane did not send (AQM, tail drop) also ends its journey.
    fn discard(&mut self, d: qos_dataplane::runtime::Discarded<u64>) {
        std::hint::black_box(d.packet);
        self.0.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// The generation bits shared by `ids`, the handles of freshly opened slots `0..n` in
/// order, checked for every one: `StreamId::from_raw(index | bits)` then gives a
/// stream's handle from its index, as the naive baseline is handed its index (a table
/// of handles read at random would add a cache miss to one side only).
pub fn fresh_generation_bits(ids: &[qos_dataplane::sched::StreamId]) -> u64 {
    let bits = ids
        .first()
        .map_or(0, |id| id.to_raw() & !u64::from(u32::MAX));
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            qos_dataplane::sched::StreamId::from_raw(i as u64 | bits),
            id,
            "the handles of fresh slots, in order"
        );
    }
    bits
}
