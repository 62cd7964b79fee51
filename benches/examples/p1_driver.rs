//! A plain driver of the P1 workload, for profilers: `perf record` and
//! `valgrind --tool=callgrind` give per-line costs without criterion's machinery.
//!
//! `cargo run --release -p qos-benches --example p1_driver -- STREAMS BATCHES [MODE] [PREFILL] [WARMUP] [FEATURES]`
//!
//! MODE `churn` (default): each batch enqueues 32 packets to uniformly random streams,
//! then takes 32 with `dequeue_batch` (the criterion `p1` workload). MODE `backlogged`:
//! each batch first refills the streams served by the previous batch, so every stream
//! stays backlogged.
//!
//! WARMUP (default 0) batches run before the clock starts. The churn workload takes a
//! while to settle from its uniform prefill: streams are spread evenly over the eight
//! priorities, so High, Medium and Low receive 2/8, 4/8 and 2/8 of the arrivals while
//! the default policy shares the link 25/60/15. Medium and then High drain, and the
//! queued packets gather in Low. At 1M streams that takes about 600,000 batches (see
//! docs/BENCHMARKS.md); criterion's warm-up covers it, a short run without WARMUP
//! measures the transient.
//!
//! FEATURES `all` (default) runs the reference policy with every per-packet feature on,
//! as the targets require. `bare` switches off AQM, aging and latency budgets through
//! the policy (the per-packet budget compare still runs, against no budget) and sojourn
//! histograms through `set_sojourn_recording`; the tiers stay (one tier changes where
//! the backlog gathers, hence the workload). It measures what those features cost
//! beside the queueing itself (docs/BENCHMARKS.md).

use std::sync::Arc;
use std::time::Instant;

use qos_dataplane::sched::{PolicySpec, Scheduler, SchedulerConfig, StreamConfig, StreamId};

fn len_of(i: u32) -> u32 {
    64 + (i.wrapping_mul(2_654_435_761) >> 7) % 1437
}

#[allow(clippy::disallowed_methods)] // a benchmark driver measures wall time
fn clock() -> Instant {
    Instant::now()
}

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n: u32 = arg(1, 4096);
    let batches: u32 = arg(2, 100_000);
    let backlogged = arg(3, String::from("churn")) == "backlogged";
    let prefill: u32 = arg(4, 2);
    let warmup: u32 = arg(5, 0);
    let bare = arg(6, String::from("all")) == "bare";
    let config = SchedulerConfig {
        max_streams: n,
        max_packets: n * (prefill + 2) + 128,
        event_capacity: 1024,
    };
    let mut spec = PolicySpec::default();
    if bare {
        spec.aqm = false;
        spec.aging_timeout_ns = None;
        spec.latency_budget_ns = [None; 8];
    }
    let policy = spec.build().expect("valid policy");
    let mut s: Scheduler<u64> = Scheduler::new(config, Arc::new(policy)).expect("valid config");
    s.set_sojourn_recording(!bare);
    let ids: Vec<StreamId> = (0..n)
        .map(|i| {
            s.open(StreamConfig::with_priority((i % 8) as u8))
                .expect("open")
        })
        .collect();
    for r in 0..prefill {
        for (i, &id) in ids.iter().enumerate() {
            let _ = s.enqueue(0, id, u64::from(r), len_of(i as u32));
        }
    }
    // Handles computed from the index, as in the criterion bench (no table look-up).
    let generation = qos_benches::fresh_generation_bits(&ids);
    let (mut cursor, mut now, mut sum) = (0usize, 0u64, 0u64);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut served: Vec<StreamId> = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(32);
    let mut burst = Vec::with_capacity(32);
    let mut rejected = Vec::with_capacity(32);
    let mut start = clock();
    for b in 0..warmup + batches {
        if b == warmup {
            start = clock();
        }
        now += 1_000;
        if backlogged {
            for (k, id) in served.drain(..).enumerate() {
                let _ = s.enqueue(now, id, k as u64, len_of(k as u32 + cursor as u32));
                cursor += 1;
            }
        } else {
            for k in 0..32u32 {
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let r = ((rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) * u64::from(n)) >> 32;
                let id = StreamId::from_raw(r | generation);
                burst.push((id, u64::from(k), len_of(k + r as u32)));
            }
            s.enqueue_burst(now, &mut burst, &mut rejected);
            rejected.clear();
        }
        out.clear();
        let _ = s.dequeue_batch(now, 32, &mut out);
        for d in out.drain(..) {
            sum += d.packet;
            if backlogged {
                served.push(d.stream);
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (f64::from(batches) * 32.0);
    println!("{ns:.1} ns per packet (enqueue + dequeue), checksum {sum}");
}
