//! S3/S4: the DRR lag bound that `docs/DECISIONS.md` states for streams of one class,
//! checked after every single decision rather than as a long-run share. While streams
//! `i` and `j` of one class are both backlogged, with `W` the bytes each was sent and `q`
//! its quantum (`quantum_bytes * weight / weight of the tier's base priority`):
//! `|W_i / q_i - W_j / q_j| <= 2 + L / q_i + L / q_j` rounds, `L` the largest packet,
//! plus one quantum for the fresh turn every stream starts with. Any mix of priorities
//! inside a tier; weight overrides of 1 to 10 times the tier's base weight in quarter
//! steps, rounded down (quanta that are not whole bytes, whose fractions are
//! dithered); fixed or per-packet random sizes from 64 bytes to the largest packet;
//! the three tier layouts. Every quantum covers the largest packet: the bound is
//! stated for such classes. A class whose quanta are below its packets is boosted
//! (S13) and its rounds grow by 2^boost; `tests/shares.rs` covers that case.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::sync::Arc;

use proptest::prelude::*;
use qos_dataplane::sched::{
    Next, Policy, PolicySpec, Priority, Scheduler, SchedulerConfig, StreamConfig, StreamId,
    TierSpec,
};
use sim::Rng;

/// Packets each stream holds throughout: it is topped up after every packet it sends.
const DEPTH: u32 = 3;
/// Decisions checked per case.
const DECISIONS: usize = 3_000;

#[derive(Clone, Debug)]
struct StreamSpec {
    /// Index into the tier's priorities.
    prio_pick: usize,
    /// A weight override of `factor / 4` times the tier's base weight.
    factor: Option<u16>,
    /// `Some(len)`: every packet `len` bytes; `None`: each packet's length random.
    len: Option<u32>,
}

fn stream_spec() -> impl Strategy<Value = StreamSpec> {
    (
        0usize..8,
        prop::option::weighted(0.3, 4u16..=40),
        prop::option::weighted(0.6, 64u32..=1_514),
    )
        .prop_map(|(prio_pick, factor, len)| StreamSpec {
            prio_pick,
            factor,
            len,
        })
}

fn policy(layout: u8) -> Policy {
    match layout % 3 {
        0 => Policy::default(),
        1 => Policy::classes5(),
        _ => PolicySpec {
            tiers: vec![TierSpec::new("All", &[0, 1, 2, 3, 4, 5, 6, 7], 100)],
            aging_timeout_ns: None,
            ..PolicySpec::default()
        }
        .build()
        .unwrap(),
    }
}

fn run(layout: u8, tier_pick: usize, specs: &[StreamSpec], seed: u64) -> Result<(), TestCaseError> {
    let policy = policy(layout);
    let tier = &policy.tiers()[tier_pick % policy.tiers().len()];
    let quantum = f64::from(policy.spec().quantum_bytes);
    let base = *tier.priorities.iter().min().unwrap();
    let base_weight = Priority::new(base).unwrap().default_weight();
    let config = SchedulerConfig {
        max_streams: specs.len() as u32,
        max_packets: specs.len() as u32 * (DEPTH + 1),
        event_capacity: 64,
    };
    let mut s: Scheduler<u32> = Scheduler::new(config, Arc::new(policy.clone())).unwrap();
    let mut rng = Rng::new(seed);
    let mut next_len = |spec: &StreamSpec| spec.len.unwrap_or_else(|| rng.range(64, 1_514) as u32);
    let mut ids: Vec<StreamId> = Vec::new();
    let mut q = Vec::new();
    for spec in specs {
        let prio = tier.priorities[spec.prio_pick % tier.priorities.len()];
        let priority = Priority::new(prio).unwrap();
        let weight = spec
            .factor
            .map(|k| (u32::from(k) * u32::from(base_weight) / 4) as u16);
        let id = s
            .open(StreamConfig {
                priority,
                weight,
                cap: None,
            })
            .unwrap();
        let weight = weight.unwrap_or(priority.default_weight());
        q.push(quantum * f64::from(weight) / f64::from(base_weight));
        for _ in 0..DEPTH {
            s.enqueue(0, id, 0, next_len(spec)).unwrap();
        }
        ids.push(id);
    }
    // L: the largest packet any of them sends.
    let largest = 1_514.0;
    let mut sent = vec![0f64; specs.len()];
    for decision in 0..DECISIONS {
        let Next::Packet(d) = s.dequeue(0) else {
            return Err(TestCaseError::fail("a backlogged class went idle"));
        };
        let i = ids.iter().position(|&id| id == d.stream).unwrap();
        sent[i] += f64::from(d.len);
        s.enqueue(0, ids[i], 0, next_len(&specs[i])).unwrap();
        for i in 0..specs.len() {
            for j in i + 1..specs.len() {
                let lag = (sent[i] / q[i] - sent[j] / q[j]).abs();
                // Two rounds of plain DRR, a packet of debt on each side, the fresh
                // turn, and two bytes of dithering each side.
                let bound = 3.0 + (largest + 2.0) / q[i] + (largest + 2.0) / q[j];
                prop_assert!(
                    lag <= bound,
                    "decision {decision}: streams {i} (q {:.1}) and {j} (q {:.1}) differ by {lag:.2} rounds, bound {bound:.2}; sent {sent:?}",
                    q[i],
                    q[j]
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn s3_s4_drr_lag_between_backlogged_streams_of_one_class_stays_within_the_stated_bound(
        layout in 0u8..3,
        tier_pick in 0usize..5,
        specs in prop::collection::vec(stream_spec(), 2..10),
        seed in any::<u64>(),
    ) {
        run(layout, tier_pick, &specs, seed)?;
    }
}
