//! shm-ring against rtrb (issue 3, DESIGN T2): one producer thread and one consumer
//! thread move fixed-size records through a 1024-slot ring, one at a time or in batches
//! of up to 32. rtrb moves `[u8; N]` values through a heap ring; shm-ring copies N-byte
//! records through a shared-memory ring (memfd), with its bounds checks and atomic word
//! copies, in slots sized by `RingConfig::for_records` (rounded to whole cache lines:
//! 64 bytes for 16-byte records, 128 for 64-byte ones). Criterion's throughput is per
//! record moved; each sample spawns the producer thread once.
//!
//! Run: `cargo bench -p qos-benches --bench shm_ring`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qos_shm_ring::{PopError, PushError, RingConfig};

const CAPACITY: usize = 1024;

/// The clock, for `iter_custom` timing only (the workspace bans `Instant::now` outside
/// the runtime's clock module; a benchmark harness is such a place).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}
const BATCH: usize = 32;

/// Spins briefly, then yields: on 2 busy cores the peer may need ours.
struct Backoff(u32);

impl Backoff {
    fn snooze(&mut self) {
        if self.0 < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        self.0 += 1;
    }
}

fn record<const N: usize>(i: u64) -> [u8; N] {
    let mut r = [0u8; N];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// Moves `n` records through rtrb, one push / pop at a time.
fn rtrb_single<const N: usize>(n: u64) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let start = now();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                let mut b = Backoff(0);
                while tx.push(record::<N>(i)).is_err() {
                    b.snooze();
                }
            }
        });
        let mut sum = 0u64;
        for _ in 0..n {
            let mut b = Backoff(0);
            loop {
                match rx.pop() {
                    Ok(r) => {
                        sum = sum.wrapping_add(u64::from(r[0]));
                        break;
                    }
                    Err(_) => b.snooze(),
                }
            }
        }
        black_box(sum);
    });
    start.elapsed()
}

/// Moves `n` records through rtrb in chunks of up to `BATCH`.
fn rtrb_batch<const N: usize>(n: u64) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let start = now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut i = 0u64;
            let mut b = Backoff(0);
            while i < n {
                let want = tx.slots().min(BATCH).min((n - i) as usize);
                if want == 0 {
                    b.snooze();
                    continue;
                }
                b = Backoff(0);
                let Ok(chunk) = tx.write_chunk_uninit(want) else {
                    continue;
                };
                let base = i;
                let written = chunk.fill_from_iter((0..want as u64).map(|k| record::<N>(base + k)));
                i += written as u64;
            }
        });
        let (mut got, mut sum) = (0u64, 0u64);
        let mut b = Backoff(0);
        while got < n {
            let want = rx.slots().min(BATCH);
            if want == 0 {
                b.snooze();
                continue;
            }
            b = Backoff(0);
            let Ok(chunk) = rx.read_chunk(want) else {
                continue;
            };
            for r in chunk.into_iter() {
                sum = sum.wrapping_add(u64::from(r[0]));
                got += 1;
            }
        }
        black_box(sum);
    });
    start.elapsed()
}

fn shm_pair(n_bytes: usize) -> (qos_shm_ring::Producer, qos_shm_ring::Consumer) {
    qos_shm_ring::pair(RingConfig::for_records(CAPACITY as u32, n_bytes as u32)).expect("ring")
}

/// Moves `n` records through shm-ring, one push / pop at a time.
fn shm_single<const N: usize>(n: u64) -> Duration {
    let (mut tx, mut rx) = shm_pair(N);
    let start = now();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                let mut b = Backoff(0);
                let r = record::<N>(i);
                while let Err(PushError::Full) = tx.push(&r) {
                    b.snooze();
                }
            }
        });
        let mut buf = [0u8; N];
        let mut sum = 0u64;
        for _ in 0..n {
            let mut b = Backoff(0);
            loop {
                match rx.pop(&mut buf) {
                    Ok(_) => {
                        sum = sum.wrapping_add(u64::from(buf[0]));
                        break;
                    }
                    Err(PopError::Empty) => b.snooze(),
                    Err(e) => panic!("bench ring failed: {e}"),
                }
            }
        }
        black_box(sum);
    });
    start.elapsed()
}

/// Moves `n` records through shm-ring in batches of up to `BATCH`.
fn shm_batch<const N: usize>(n: u64) -> Duration {
    let (mut tx, mut rx) = shm_pair(N);
    let start = now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut i = 0u64;
            let mut b = Backoff(0);
            while i < n {
                let want = BATCH.min((n - i) as usize);
                let mut batch = match tx.reserve(want) {
                    Ok(batch) => batch,
                    Err(PushError::Full) => {
                        b.snooze();
                        continue;
                    }
                    Err(e) => panic!("bench ring failed: {e}"),
                };
                b = Backoff(0);
                while batch.remaining() > 0 {
                    let _ = batch.write(&record::<N>(i + batch.len() as u64));
                }
                i += batch.commit() as u64;
            }
        });
        let mut buf = [0u8; N];
        let (mut got, mut sum) = (0u64, 0u64);
        let mut b = Backoff(0);
        while got < n {
            let mut batch = match rx.read(BATCH) {
                Ok(batch) => batch,
                Err(PopError::Empty) => {
                    b.snooze();
                    continue;
                }
                Err(e) => panic!("bench ring failed: {e}"),
            };
            b = Backoff(0);
            while let Some(Ok(_)) = batch.next_into(&mut buf) {
                sum = sum.wrapping_add(u64::from(buf[0]));
            }
            got += batch.release() as u64;
        }
        black_box(sum);
    });
    start.elapsed()
}

fn group<const N: usize>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("spsc_{N}B"));
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("rtrb", "single"), |b| {
        b.iter_custom(rtrb_single::<N>)
    });
    g.bench_function(BenchmarkId::new("shm_ring", "single"), |b| {
        b.iter_custom(shm_single::<N>)
    });
    g.bench_function(BenchmarkId::new("rtrb", "batch32"), |b| {
        b.iter_custom(rtrb_batch::<N>)
    });
    g.bench_function(BenchmarkId::new("shm_ring", "batch32"), |b| {
        b.iter_custom(shm_batch::<N>)
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    group::<16>(c);
    group::<64>(c);
}

criterion_group!(shm_ring, benches);
criterion_main!(shm_ring);
