//! The batch API: `dequeue_batch` makes exactly the decisions of as many `dequeue` calls
//! (S12), says why it stopped (`BatchEnd`), and with `enqueue_burst` allocates nothing
//! after warm-up (S13). This binary counts allocations with its own global allocator.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod counting_alloc;
mod sim;

use std::sync::Arc;

use counting_alloc::{Counting, allocations};
use qos_dataplane::sched::{
    BatchEnd, Dequeued, DropReason, Event, LinkRate, Next, Policy, PolicySpec, Priority, RateCap,
    Reclaimed, Rejected, Rejection, Scheduler, SchedulerConfig, StreamConfig, StreamId,
};
use sim::{MS, Rng, SEC};

#[global_allocator]
static GLOBAL: Counting = Counting;

// ----- per-packet and batch paths agree --------------------------------------------------

/// An overloaded, paced, partly capped policy with AQM on, short budget windows and
/// shallow queues, so every path of a decision is taken.
fn busy_policy(version: u64, rate_bps: u64) -> Policy {
    let mut spec = PolicySpec {
        version,
        link: Some(LinkRate {
            rate_bps,
            burst_bytes: 64_000,
        }),
        max_queue_depth: 300,
        budget_window_ns: 100 * MS,
        aging_timeout_ns: Some(300 * MS),
        ..PolicySpec::default()
    };
    spec.latency_budget_ns[7] = Some(2 * MS);
    spec.latency_budget_ns[4] = Some(10 * MS);
    spec.build().unwrap()
}

fn new_sched(policy: Policy) -> Scheduler<u64> {
    let config = SchedulerConfig {
        max_streams: 128,
        max_packets: 1 << 16,
        event_capacity: 1 << 14,
    };
    Scheduler::new(config, Arc::new(policy)).unwrap()
}

fn random_config(rng: &mut Rng) -> StreamConfig {
    let priority = Priority::ALL[rng.below(8) as usize];
    let cap = (rng.below(4) == 0).then(|| RateCap {
        rate_bps: rng.range(500_000, 5_000_000),
        burst_bytes: None,
    });
    let weight = (rng.below(8) == 0).then(|| rng.range(1, 300) as u16);
    StreamConfig {
        priority,
        weight,
        cap,
    }
}

/// Everything the caller observed at one tick: the packets sent, why the drain stopped,
/// the events and reclaimed packets, and what came back from enqueue.
#[derive(Debug, PartialEq)]
struct Tick {
    now: u64,
    sent: Vec<(u64, StreamId, u32, Priority, u64)>,
    end: BatchEnd,
    events: Vec<Event>,
    reclaimed: Vec<(StreamId, u64, DropReason)>,
    rejected: Vec<(u64, Rejection)>,
}

/// How the sim drains a scheduler at one tick.
#[derive(Clone, Copy, Debug)]
enum Drain {
    /// Up to `max` calls of `dequeue(now)`.
    PerPacket,
    /// One `dequeue_batch(now, max, ..)`.
    Batch,
}

const MAX: usize = 32;

fn drain(s: &mut Scheduler<u64>, how: Drain, now: u64, out: &mut Vec<Dequeued<u64>>) -> BatchEnd {
    match how {
        Drain::Batch => s.dequeue_batch(now, MAX, out),
        Drain::PerPacket => {
            for _ in 0..MAX {
                match s.dequeue(now) {
                    Next::Packet(d) => out.push(d),
                    Next::Wait { until_ns } => return BatchEnd::Wait { until_ns },
                    Next::Idle => return BatchEnd::Idle,
                }
            }
            BatchEnd::Full
        }
    }
}

/// Drives one scheduler through the random run of `seed`, draining it `how`. The
/// traffic, stream updates, closes and policy changes depend only on the seed, never on
/// what the scheduler did, so two runs see identical inputs.
fn run(seed: u64, how: Drain) -> (Vec<Tick>, Scheduler<u64>, Vec<StreamId>) {
    let mut rng = Rng::new(seed);
    let mut s = new_sched(busy_policy(1, 40_000_000));
    let mut ids: Vec<StreamId> = (0..48)
        .map(|_| s.open(random_config(&mut rng)).unwrap())
        .collect();
    let mut ticks = Vec::new();
    let mut out = Vec::with_capacity(MAX);
    let (mut now, mut seq) = (0u64, 0u64);
    while now < 2 * SEC {
        let mut tick = Tick {
            now,
            sent: Vec::new(),
            end: BatchEnd::Idle,
            events: Vec::new(),
            reclaimed: Vec::new(),
            rejected: Vec::new(),
        };
        // Arrivals: ~5x the link, skewed towards a few heavy streams.
        for _ in 0..rng.below(14) {
            let k = if rng.below(2) == 0 {
                rng.below(6)
            } else {
                rng.below(ids.len() as u64)
            } as usize;
            let len = rng.range(64, 1_500) as u32;
            seq += 1;
            if let Err(Rejected { packet, reason }) = s.enqueue(now, ids[k], seq, len) {
                tick.rejected.push((packet, reason));
            }
        }
        // Rare control actions, decided by the seed alone.
        match rng.below(400) {
            0 => {
                let k = rng.below(ids.len() as u64) as usize;
                let _ = s.update(ids[k], random_config(&mut rng));
            }
            1 => {
                let k = rng.below(ids.len() as u64) as usize;
                let _ = s.close(ids[k]);
                ids[k] = s.open(random_config(&mut rng)).unwrap();
            }
            2 => {
                let rate = rng.range(20, 60) * 1_000_000;
                s.set_policy(now, Arc::new(busy_policy(2, rate)));
            }
            _ => {}
        }
        tick.end = drain(&mut s, how, now, &mut out);
        tick.sent.extend(
            out.drain(..)
                .map(|d| (d.packet, d.stream, d.len, d.priority, d.sojourn_ns)),
        );
        tick.events.extend(std::iter::from_fn(|| s.pop_event()));
        tick.reclaimed.extend(
            std::iter::from_fn(|| s.pop_reclaimed())
                .map(|r: Reclaimed<u64>| (r.stream, r.packet, r.reason)),
        );
        ticks.push(tick);
        // Now and then the caller is away long enough for the link bucket to fill.
        now += if rng.below(100) == 0 {
            20 * MS
        } else {
            rng.range(5_000, 300_000)
        };
    }
    (ticks, s, ids)
}

#[test]
fn s12_dequeue_batch_makes_the_same_decisions_as_dequeue() {
    for seed in [1, 2, 3] {
        let (a, sa, ids_a) = run(seed, Drain::PerPacket);
        let (b, sb, ids_b) = run(seed, Drain::Batch);
        assert_eq!(ids_a, ids_b, "seed {seed}: same streams");
        assert_eq!(a.len(), b.len(), "seed {seed}: same ticks");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "seed {seed}: first difference at t = {} ns", x.now);
        }
        assert_eq!(sa.shard_stats(), sb.shard_stats(), "seed {seed}");
        for p in Priority::ALL {
            assert_eq!(
                sa.priority_stats(p),
                sb.priority_stats(p),
                "seed {seed} {p}"
            );
            assert!(
                sa.sojourn_histogram(p) == sb.sojourn_histogram(p),
                "seed {seed} {p}: histograms differ"
            );
        }
        for t in 0..3 {
            assert_eq!(sa.tier_stats(t), sb.tier_stats(t), "seed {seed}");
        }
        for &id in &ids_a {
            assert_eq!(sa.stream_stats(id), sb.stream_stats(id), "seed {seed} {id}");
        }
        assert_eq!(sa.aging_lane_stats(), sb.aging_lane_stats());
        // The run took every path: full batches, pacing and cap waits, AQM drops, tail
        // drops, budget violations.
        let ends = |e: fn(&BatchEnd) -> bool| a.iter().filter(|t| e(&t.end)).count();
        let full = ends(|e| *e == BatchEnd::Full);
        let waits = ends(|e| matches!(e, BatchEnd::Wait { .. }));
        let shard = sa.shard_stats();
        let aqm = shard.totals.dropped[DropReason::Aqm as usize];
        let tail = shard.totals.dropped[DropReason::QueueFull as usize];
        let violations = a
            .iter()
            .flat_map(|t| &t.events)
            .filter(|e| matches!(e, Event::BudgetViolation { .. }))
            .count();
        let sent: usize = a.iter().map(|t| t.sent.len()).sum();
        assert!(
            full > 0 && waits > 1_000 && aqm > 0 && tail > 0 && violations > 0 && sent > 5_000,
            "seed {seed}: full {full}, waits {waits}, aqm {aqm}, tail {tail}, \
             violations {violations}, sent {sent}"
        );
        assert!(shard.is_conserved(), "{shard:?}");
    }
}

// ----- BatchEnd --------------------------------------------------------------------------

fn sched(spec: PolicySpec) -> Scheduler<u64> {
    Scheduler::new(SchedulerConfig::default(), Arc::new(spec.build().unwrap())).unwrap()
}

#[test]
fn batch_end_full_when_max_packets_were_taken() {
    let mut s = sched(PolicySpec::default());
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..100 {
        s.enqueue(0, id, i, 500).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(s.dequeue_batch(1, 32, &mut out), BatchEnd::Full);
    assert_eq!(out.len(), 32);
    let got: Vec<u64> = out.iter().map(|d| d.packet).collect();
    assert_eq!(got, (0..32).collect::<Vec<_>>(), "in order");
    // Appends: the second batch goes after the first.
    assert_eq!(s.dequeue_batch(2, 60, &mut out), BatchEnd::Full);
    assert_eq!(out.len(), 92);
    // Fewer than `max` left: it ends Idle with what there was.
    assert_eq!(s.dequeue_batch(3, 32, &mut out), BatchEnd::Idle);
    assert_eq!(out.len(), 100);
    assert_eq!(
        s.dequeue_batch(3, 0, &mut out),
        BatchEnd::Full,
        "max 0 takes nothing"
    );
    assert_eq!(out.len(), 100);
}

#[test]
fn batch_end_idle_when_nothing_is_queued() {
    let mut s = sched(PolicySpec::default());
    let mut out = Vec::new();
    assert_eq!(s.dequeue_batch(0, 32, &mut out), BatchEnd::Idle);
    assert!(out.is_empty());
    let id = s.open(StreamConfig::with_priority(6)).unwrap();
    s.enqueue(5, id, 1, 100).unwrap();
    assert_eq!(s.dequeue_batch(10, 32, &mut out), BatchEnd::Idle);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].sojourn_ns, 5);
    assert_eq!(s.dequeue_batch(20, 32, &mut out), BatchEnd::Idle);
    assert_eq!(out.len(), 1);
}

#[test]
fn batch_end_wait_until_the_link_bucket_holds_the_next_packet() {
    // 8 Mbit/s: one byte per microsecond; a 10 kB bucket holds ten 1000-byte packets.
    let (rate, burst, len) = (8_000_000u64, 10_000u64, 1_000u32);
    let mut s = sched(PolicySpec {
        link: Some(LinkRate {
            rate_bps: rate,
            burst_bytes: burst,
        }),
        ..PolicySpec::default()
    });
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..40 {
        s.enqueue(0, id, i, len).unwrap();
    }
    let per_packet_ns = u64::from(len) * 8 * SEC / rate;
    let mut out = Vec::new();
    let end = s.dequeue_batch(0, 32, &mut out);
    assert_eq!(
        out.len() as u64,
        burst / u64::from(len),
        "the burst, then pacing"
    );
    assert_eq!(
        end,
        BatchEnd::Wait {
            until_ns: per_packet_ns
        }
    );
    // Asking early changes nothing; asking at the time given releases one packet.
    assert_eq!(
        s.dequeue_batch(per_packet_ns - 1, 32, &mut out),
        BatchEnd::Wait {
            until_ns: per_packet_ns
        }
    );
    assert_eq!(out.len(), 10);
    let end = s.dequeue_batch(per_packet_ns, 32, &mut out);
    assert_eq!(out.len(), 11);
    assert_eq!(
        end,
        BatchEnd::Wait {
            until_ns: 2 * per_packet_ns
        }
    );
}

#[test]
fn batch_end_wait_for_a_capped_stream_and_idle_after_it() {
    // 1 byte per microsecond; the bucket holds two 5000-byte packets.
    let cap = RateCap {
        rate_bps: 8_000_000,
        burst_bytes: Some(10_000),
    };
    let mut s = sched(PolicySpec::default());
    let id = s
        .open(StreamConfig {
            priority: Priority::ALL[5],
            weight: None,
            cap: Some(cap),
        })
        .unwrap();
    for i in 0..3 {
        s.enqueue(0, id, i, 5_000).unwrap();
    }
    let mut out = Vec::new();
    let BatchEnd::Wait { until_ns } = s.dequeue_batch(0, 32, &mut out) else {
        panic!("the cap holds the third packet back")
    };
    assert_eq!(out.len(), 2);
    assert_eq!(until_ns, 5_000_000, "5000 bytes at 1 B/us");
    assert_eq!(s.dequeue_batch(until_ns, 32, &mut out), BatchEnd::Idle);
    assert_eq!(out.len(), 3);
}

// ----- S13: the batch path allocates nothing after warm-up --------------------------------

#[test]
fn s13_dequeue_batch_and_enqueue_burst_allocate_nothing_after_warm_up() {
    let spec = |version| PolicySpec {
        version,
        link: Some(LinkRate {
            rate_bps: 1_000_000_000,
            burst_bytes: 32_000,
        }),
        max_queue_depth: 64,
        budget_window_ns: 10 * MS,
        ..PolicySpec::default()
    };
    let config = SchedulerConfig {
        max_streams: 512,
        max_packets: 1 << 15,
        event_capacity: 256,
    };
    let mut s: Scheduler<u64> = Scheduler::new(config, Arc::new(spec(1).build().unwrap())).unwrap();
    let mut rng = Rng::new(99);
    let ids: Vec<StreamId> = (0..300)
        .map(|_| s.open(random_config(&mut rng)).unwrap())
        .collect();
    let policies = [
        Arc::new(spec(2).build().unwrap()),
        Arc::new(spec(3).build().unwrap()),
    ];
    let mut out: Vec<Dequeued<u64>> = Vec::with_capacity(16);
    let mut burst: Vec<(StreamId, u64, u32)> = Vec::with_capacity(96);
    let mut rejected: Vec<Rejected<u64>> = Vec::with_capacity(96);
    let (mut now, mut seq) = (0u64, 0u64);
    let mut totals = (0u64, 0u64, 0u64); // sent, waits, fulls
    let mut step = |s: &mut Scheduler<u64>, round: u64, totals: &mut (u64, u64, u64)| {
        for _ in 0..rng.below(96) {
            let id = ids[rng.below(ids.len() as u64) as usize];
            seq += 1;
            burst.push((id, seq, rng.range(64, 1_500) as u32));
        }
        s.enqueue_burst(now, &mut burst, &mut rejected);
        rejected.clear();
        // A few single enqueues too, including refused ones.
        let _ = s.enqueue(now, ids[(round % 300) as usize], seq, 700);
        let _ = s.enqueue(now, ids[0], seq, 0);
        match s.dequeue_batch(now, 16, &mut out) {
            BatchEnd::Full => totals.2 += 1,
            BatchEnd::Wait { .. } => totals.1 += 1,
            BatchEnd::Idle => {}
        }
        totals.0 += out.len() as u64;
        out.clear();
        while s.pop_event().is_some() {}
        while s.pop_reclaimed().is_some() {}
        if round.is_multiple_of(100) {
            s.set_policy(now, policies[(round / 100 % 2) as usize].clone());
        }
        // Mostly overloaded (pacing waits); every tenth gap refills the bucket.
        now += if round.is_multiple_of(10) { MS } else { 40_000 };
    };
    for round in 0..1_000 {
        step(&mut s, round, &mut totals);
    }
    let before = allocations();
    for round in 1_000..4_000 {
        step(&mut s, round, &mut totals);
    }
    let during = allocations() - before;
    assert!(
        totals.0 > 20_000 && totals.1 > 0 && totals.2 > 0,
        "the loop exercised full batches and waits: {totals:?}"
    );
    let shard = s.shard_stats();
    assert!(
        shard.totals.dropped[DropReason::Aqm as usize] > 0,
        "and AQM: {shard:?}"
    );
    assert_eq!(during, 0, "heap allocations on the batch hot path");
}
