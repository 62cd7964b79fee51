//! P1-P3: the scheduler core against baselines measured in the same run.
//!
//! Workload: `n` streams over priorities `s % 8` (default policy), each prefilled with
//! two packets; one iteration enqueues a batch of 32 packets to uniformly random
//! streams (lengths 64..1500; random, so the hardware prefetcher cannot hide the
//! misses real traffic pays) and dequeues 32, with the batch API (`dequeue_batch`) or
//! the per-packet API (`dequeue`). Counters and histograms are on. Criterion's
//! throughput is per packet (enqueue + dequeue). Beside ours: the naive baseline (P3),
//! `tiered_drr_floor` (a plain implementation of the least per-packet work of the same
//! contract, a yardstick for P1/P2) and, at 4K, one plain FIFO.
//! Run: `cargo bench -p qos-benches --bench scheduler`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qos_benches::{DrrFloor, NaiveScheduler};
use qos_dataplane::sched::{
    Dequeued, Next, Policy, Rejected, Scheduler, SchedulerConfig, StreamConfig, StreamId,
};

const BATCH: u32 = 32;
const PREFILL: u32 = 2;

fn len_of(i: u32) -> u32 {
    64 + (i.wrapping_mul(2_654_435_761) >> 7) % 1437
}

/// xorshift64*: the random stream of each enqueue (same sequence for every candidate).
struct Rng(u64);
impl Rng {
    #[inline(always)]
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) * u64::from(n)) >> 32) as u32
    }
}

struct Ours {
    sched: Scheduler<u64>,
    /// Streams opened.
    n: u32,
    /// The generation bits every handle carries (all slots are fresh), so a stream's
    /// handle is computed from its index as the naive baseline's index is: looking it up
    /// in a table would add a random read of 8 MB at 1M streams to our side only.
    generation: u64,
    rng: Rng,
    now: u64,
    out: Vec<Dequeued<u64>>,
    burst: Vec<(StreamId, u64, u32)>,
    rejected: Vec<Rejected<u64>>,
}

impl Ours {
    fn new(n: u32) -> Self {
        let config = SchedulerConfig {
            max_streams: n,
            max_packets: n * (PREFILL + 2) + 4 * BATCH,
            event_capacity: 1024,
        };
        let mut sched = Scheduler::new(config, Arc::new(Policy::default())).expect("config");
        let ids: Vec<StreamId> = (0..n)
            .map(|s| {
                sched
                    .open(StreamConfig::with_priority((s % 8) as u8))
                    .expect("open")
            })
            .collect();
        for round in 0..PREFILL {
            for (i, &id) in ids.iter().enumerate() {
                let _ = sched.enqueue(0, id, u64::from(round), len_of(i as u32));
            }
        }
        let generation = qos_benches::fresh_generation_bits(&ids);
        Self {
            sched,
            n,
            generation,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            now: 0,
            out: Vec::with_capacity(BATCH as usize),
            burst: Vec::with_capacity(BATCH as usize),
            rejected: Vec::with_capacity(BATCH as usize),
        }
    }

    /// The handle of stream `s`.
    #[inline(always)]
    fn id(&self, s: u32) -> StreamId {
        StreamId::from_raw(u64::from(s) | self.generation)
    }

    #[inline]
    fn enqueue_each(&mut self) -> u64 {
        self.now += 1_000;
        let mut sum = 0;
        for k in 0..BATCH {
            let s = self.rng.below(self.n);
            let id = self.id(s);
            if self
                .sched
                .enqueue(self.now, id, u64::from(k), len_of(k + s))
                .is_err()
            {
                sum += 1;
            }
        }
        sum
    }

    /// `enqueue_burst` of 32, then `dequeue_batch` of 32: the batch API.
    #[inline]
    fn batch(&mut self) -> u64 {
        self.now += 1_000;
        for k in 0..BATCH {
            let s = self.rng.below(self.n);
            let id = self.id(s);
            self.burst.push((id, u64::from(k), len_of(k + s)));
        }
        self.sched
            .enqueue_burst(self.now, &mut self.burst, &mut self.rejected);
        let mut sum = self.rejected.len() as u64;
        self.rejected.clear();
        self.out.clear();
        let _ = self
            .sched
            .dequeue_batch(self.now, BATCH as usize, &mut self.out);
        for d in &self.out {
            sum += d.packet + u64::from(d.len);
        }
        sum
    }

    /// 32 calls of `enqueue`, then 32 of `dequeue`: the per-packet API.
    #[inline]
    fn per_packet(&mut self) -> u64 {
        let mut sum = self.enqueue_each();
        for _ in 0..BATCH {
            if let Next::Packet(d) = self.sched.dequeue(self.now) {
                sum += d.packet + u64::from(d.len);
            }
        }
        sum
    }
}

struct Naive {
    sched: NaiveScheduler<u64>,
    n: u32,
    rng: Rng,
}

impl Naive {
    fn new(n: u32) -> Self {
        let mut sched = NaiveScheduler::new();
        for s in 0..n {
            sched.open((s % 8) as u8);
        }
        for round in 0..PREFILL {
            for s in 0..n {
                sched.enqueue(s, u64::from(round), len_of(s));
            }
        }
        Self {
            sched,
            n,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
        }
    }

    #[inline]
    fn batch(&mut self) -> u64 {
        let mut sum = 0;
        for k in 0..BATCH {
            let s = self.rng.below(self.n);
            self.sched.enqueue(s, u64::from(k), len_of(k + s));
        }
        for _ in 0..BATCH {
            if let Some((_, p, len)) = self.sched.dequeue() {
                sum += p + u64::from(len);
            }
        }
        sum
    }
}

/// The least work of the same contract ([`DrrFloor`]), on the same workload.
struct Floor {
    sched: DrrFloor<u64>,
    n: u32,
    rng: Rng,
    now: u64,
}

impl Floor {
    fn new(n: u32) -> Self {
        let mut sched = DrrFloor::new(n * (PREFILL + 2) + 4 * BATCH);
        let ids: Vec<u64> = (0..n).map(|s| sched.open((s % 8) as u8)).collect();
        for round in 0..PREFILL {
            for (i, &id) in ids.iter().enumerate() {
                let _ = sched.enqueue(0, id, u64::from(round), len_of(i as u32));
            }
        }
        Self {
            sched,
            n,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            now: 0,
        }
    }

    #[inline]
    fn batch(&mut self) -> u64 {
        self.now += 1_000;
        let mut sum = 0;
        for k in 0..BATCH {
            let s = self.rng.below(self.n);
            let id = u64::from(s) | 1 << 32;
            if self
                .sched
                .enqueue(self.now, id, u64::from(k), len_of(k + s))
                .is_err()
            {
                sum += 1;
            }
        }
        for _ in 0..BATCH {
            if let Some((_, p, len, _)) = self.sched.dequeue(self.now) {
                sum += p + u64::from(len);
            }
        }
        sum
    }
}

/// `fifo_floor`: one FIFO, no scheduling at all.
fn fifo_batch(q: &mut VecDeque<(u64, u32)>) -> u64 {
    let mut sum = 0;
    for k in 0..BATCH {
        q.push_back((u64::from(k), len_of(k)));
    }
    for _ in 0..BATCH {
        if let Some((p, len)) = q.pop_front() {
            sum += p + u64::from(len);
        }
    }
    sum
}

fn p1(c: &mut Criterion) {
    eprintln!(
        "P2 memory: {} B per stream slot, {} B per queued descriptor (u64 handle)",
        Scheduler::<u64>::stream_slot_bytes(),
        Scheduler::<u64>::descriptor_bytes()
    );
    let mut g = c.benchmark_group("p1_4k_streams_batch32");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut ours = Ours::new(4096);
    g.bench_function("qos_sched_batch", |b| b.iter(|| black_box(ours.batch())));
    let mut ours = Ours::new(4096);
    g.bench_function("qos_sched_per_packet", |b| {
        b.iter(|| black_box(ours.per_packet()))
    });
    let mut naive = Naive::new(4096);
    g.bench_function("naive_heap_vecdeque", |b| {
        b.iter(|| black_box(naive.batch()))
    });
    let mut floor = Floor::new(4096);
    g.bench_function("tiered_drr_floor", |b| b.iter(|| black_box(floor.batch())));
    let mut fifo = VecDeque::with_capacity(64);
    g.bench_function("fifo_floor", |b| {
        b.iter(|| black_box(fifo_batch(&mut fifo)))
    });
    g.finish();
}

fn p2_p3(c: &mut Criterion) {
    let mut g = c.benchmark_group("p2_p3_stream_count");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    for n in [64u32, 1 << 12, 1 << 16, 1 << 20] {
        let mut ours = Ours::new(n);
        g.bench_with_input(BenchmarkId::new("qos_sched_batch", n), &n, |b, _| {
            b.iter(|| black_box(ours.batch()))
        });
        drop(ours);
        let mut ours = Ours::new(n);
        g.bench_with_input(BenchmarkId::new("qos_sched_per_packet", n), &n, |b, _| {
            b.iter(|| black_box(ours.per_packet()))
        });
        drop(ours);
        let mut naive = Naive::new(n);
        g.bench_with_input(BenchmarkId::new("naive_heap_vecdeque", n), &n, |b, _| {
            b.iter(|| black_box(naive.batch()))
        });
        drop(naive);
        let mut floor = Floor::new(n);
        g.bench_with_input(BenchmarkId::new("tiered_drr_floor", n), &n, |b, _| {
            b.iter(|| black_box(floor.batch()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = p1, p2_p3
}
criterion_main!(benches);
