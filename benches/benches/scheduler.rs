//! P1-P3: the scheduler core against baselines measured in the same run.
//!
//! Workload: `n` streams over priorities `s % 8` (default policy), each prefilled with
//! two packets; one iteration enqueues a batch of 32 packets round-robin over the
//! streams (lengths 64..1500) and dequeues 32. Criterion's throughput is per packet
//! (enqueue + dequeue). Run: `cargo bench -p qos-benches --bench scheduler`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qos_benches::NaiveScheduler;
use qos_dataplane::sched::{Next, Policy, Scheduler, SchedulerConfig, StreamConfig, StreamId};

const BATCH: u32 = 32;
const PREFILL: u32 = 2;

fn len_of(i: u32) -> u32 {
    64 + (i.wrapping_mul(2_654_435_761) >> 7) % 1437
}

struct Ours {
    sched: Scheduler<u64>,
    ids: Vec<StreamId>,
    cursor: usize,
    now: u64,
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
        Self {
            sched,
            ids,
            cursor: 0,
            now: 0,
        }
    }

    #[inline]
    fn batch(&mut self) -> u64 {
        self.now += 1_000;
        let mut sum = 0;
        for k in 0..BATCH {
            let id = self.ids[self.cursor];
            self.cursor = (self.cursor + 1) % self.ids.len();
            if self
                .sched
                .enqueue(self.now, id, u64::from(k), len_of(k + self.cursor as u32))
                .is_err()
            {
                sum += 1;
            }
        }
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
    cursor: u32,
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
            cursor: 0,
        }
    }

    #[inline]
    fn batch(&mut self) -> u64 {
        let mut sum = 0;
        for k in 0..BATCH {
            let s = self.cursor;
            self.cursor = (self.cursor + 1) % self.n;
            self.sched.enqueue(s, u64::from(k), len_of(k + self.cursor));
        }
        for _ in 0..BATCH {
            if let Some((_, p, len)) = self.sched.dequeue() {
                sum += p + u64::from(len);
            }
        }
        sum
    }
}

/// The floor: one FIFO, no scheduling at all.
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
    g.bench_function("qos_sched", |b| b.iter(|| black_box(ours.batch())));
    let mut naive = Naive::new(4096);
    g.bench_function("naive_heap_vecdeque", |b| {
        b.iter(|| black_box(naive.batch()))
    });
    let mut fifo = VecDeque::with_capacity(64);
    g.bench_function("fifo_floor", |b| {
        b.iter(|| black_box(fifo_batch(&mut fifo)))
    });
    g.finish();
}

fn p2_p3(c: &mut Criterion) {
    let mut g = c.benchmark_group("p2_p3_stream_count");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    for n in [64u32, 1 << 10, 1 << 16, 1 << 20] {
        let mut ours = Ours::new(n);
        g.bench_with_input(BenchmarkId::new("qos_sched", n), &n, |b, _| {
            b.iter(|| black_box(ours.batch()))
        });
        drop(ours);
        if n == 64 || n == 1 << 16 || n == 1 << 20 {
            let mut naive = Naive::new(n);
            g.bench_with_input(BenchmarkId::new("naive_heap_vecdeque", n), &n, |b, _| {
                b.iter(|| black_box(naive.batch()))
            });
        }
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
