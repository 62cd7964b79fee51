//! The runtime end to end (issue 7, DESIGN P4, P7, P8), each against its baseline in the
//! same run:
//! * `p4_pipeline`: one producer thread -> rtrb ring -> one worker -> counting egress,
//!   with the scheduler (reference policy, 1024 streams at random priorities, no link
//!   pacing) against the same pipeline with the scheduler bypassed (pass-through).
//! * `p7_policy_adoption`: time from `publish_policy` until every one of 2 workers
//!   reports the new version, with the workers idle (parked) and busy.
//! * `p8_observability`: the P4 pipeline with the scheduler counters published every
//!   100 us and sojourn histograms recorded (default) against counters published only
//!   at the end and no histogram recording.
//!
//! Run: `cargo bench -p qos-benches --bench runtime`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qos_benches::CountingEgress;
use qos_dataplane::runtime::{
    Dataplane, EnqueueError, IdleStrategy, Pinning, Producer, RuntimeConfig, StopMode, StreamHandle,
};
use qos_dataplane::sched::{Policy, PolicySpec, StreamConfig};

/// The clock, for `iter_custom` timing only.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const PACKETS: u64 = 100_000;
const STREAMS: u64 = 1024;

struct Pipeline {
    dp: Option<Dataplane<u64>>,
    tx: Option<Producer<u64>>,
    streams: Vec<StreamHandle>,
    sent: Arc<AtomicU64>,
    pushed: u64,
}

impl Pipeline {
    fn new(config: RuntimeConfig) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        let spec = PolicySpec {
            // Keep every stream's queue short: the bench offers more than the worker
            // takes in bursts, and a disconnect would discard.
            disconnect: false,
            ..PolicySpec::default()
        };
        let (dp, mut producers) = Dataplane::<u64>::builder()
            .config(config)
            .policy(Arc::new(spec.build().expect("policy")))
            .build(move |_| CountingEgress(s.clone()))
            .expect("dataplane");
        let mut tx = producers.pop().expect("producer");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let streams = (0..STREAMS)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                tx.open(i, StreamConfig::with_priority((x % 8) as u8))
                    .expect("open")
            })
            .collect();
        Self {
            dp: Some(dp),
            tx: Some(tx),
            streams,
            sent,
            pushed: 0,
        }
    }

    /// Pushes `n` packets round robin over the streams, then waits until the egress has
    /// sent or discarded them all.
    fn run(&mut self, n: u64) {
        let tx = self.tx.as_mut().expect("producer");
        let mut i = 0;
        while i < n {
            let h = self.streams[(self.pushed % STREAMS) as usize];
            match tx.enqueue_quiet(h, i, 1000) {
                Ok(()) => {
                    i += 1;
                    self.pushed += 1;
                }
                Err(EnqueueError::Full(_)) => {
                    tx.flush();
                    std::hint::spin_loop();
                }
                Err(e) => panic!("{e}"),
            }
            if i % 64 == 0 {
                tx.flush();
            }
        }
        tx.flush();
        let start = now();
        while self.sent.load(Ordering::Acquire) < self.pushed {
            std::hint::spin_loop();
            if start.elapsed() > Duration::from_secs(30) {
                let stats = self.dp.as_ref().map(|d| d.stats());
                panic!("pipeline stalled: pushed {}, stats {stats:?}", self.pushed);
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        drop(self.tx.take()); // shutdown waits for producers to be dropped
        if let Some(dp) = self.dp.take() {
            let _ = dp.shutdown(StopMode::Discard);
        }
    }
}

fn base_config() -> RuntimeConfig {
    RuntimeConfig {
        workers: 1,
        pinning: Pinning::Off,
        ring_capacity: 4096,
        ingress_batch: 64,
        egress_batch: 32,
        // Measure the pipeline, not park/unpark latency (which made the pass-through
        // baseline bimodal: 1.4 ms or 4-6 ms per 100k packets from run to run).
        idle: IdleStrategy::Spin,
        ..RuntimeConfig::default()
    }
}

fn bench_pipeline(c: &mut Criterion, group: &str, cases: &[(&str, RuntimeConfig)]) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(PACKETS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (name, config) in cases {
        let mut p = Pipeline::new(*config);
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let start = now();
                for _ in 0..iters {
                    p.run(PACKETS);
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn p4_pipeline(c: &mut Criterion) {
    let sched = base_config();
    let pass = RuntimeConfig {
        bypass_scheduler: true,
        ..base_config()
    };
    bench_pipeline(
        c,
        "p4_pipeline",
        &[("scheduler", sched), ("pass_through", pass)],
    );
}

fn p8_observability(c: &mut Criterion) {
    let on = base_config();
    let off = RuntimeConfig {
        publish_interval: Duration::from_secs(3600),
        sojourn_histograms: false,
        ..base_config()
    };
    bench_pipeline(
        c,
        "p8_observability",
        &[("counters_and_histograms", on), ("both_off", off)],
    );
}

fn p7_policy_adoption(c: &mut Criterion) {
    let mut g = c.benchmark_group("p7_policy_adoption");
    g.sample_size(30);
    for busy in [false, true] {
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        let (dp, mut producers) = Dataplane::<u64>::builder()
            .workers(2)
            .pinning(Pinning::Off)
            .build(move |_| CountingEgress(s.clone()))
            .expect("dataplane");
        let mut tx = producers.pop().expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        // Busy: a producer thread keeps both workers fed.
        let feeder = if busy {
            let stop = stop.clone();
            Some(std::thread::spawn(move || {
                let hs: Vec<_> = (0..64u64)
                    .map(|i| {
                        tx.open(i, StreamConfig::with_priority((i % 8) as u8))
                            .expect("open")
                    })
                    .collect();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if tx.enqueue(hs[(i % 64) as usize], i, 500).is_err() {
                        std::thread::yield_now();
                    }
                    i += 1;
                }
            }))
        } else {
            drop(tx); // shutdown waits for producers to be dropped
            None
        };
        let mut version = 1u64;
        let name = if busy { "busy_workers" } else { "idle_workers" };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    version += 1;
                    let spec = PolicySpec {
                        version,
                        ..PolicySpec::default()
                    };
                    let policy: Arc<Policy> = Arc::new(spec.build().expect("policy"));
                    let start = now();
                    dp.publish_policy(policy).expect("publish");
                    // Yield while waiting: on 2 cores the workers need them.
                    while dp.policy_versions().iter().any(|&v| v != version) {
                        std::thread::yield_now();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
        stop.store(true, Ordering::Relaxed);
        if let Some(f) = feeder {
            f.join().expect("feeder");
        }
        let _ = dp.shutdown(StopMode::Discard);
    }
    g.finish();
}

criterion_group!(benches, p4_pipeline, p7_policy_adoption, p8_observability);
criterion_main!(benches);
