//! A policy change takes effect at the next decision (T3 at the core's level, P7).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::sync::Arc;

use qos_dataplane::sched::{
    DropReason, Next, Policy, PolicySpec, Rejection, Scheduler, SchedulerConfig, StreamConfig,
    TierSpec,
};
use sim::{MS, Sim};

#[test]
fn p7_policy_change_mid_run_takes_effect_at_the_next_decision() {
    let mut sim = Sim::default_policy(1_000_000_000);
    for p in 0..8 {
        sim.saturate(p, 1000);
    }
    sim.run_for(100 * MS);
    let before = sim.sent.len();
    let mut spec = PolicySpec {
        version: 2,
        ..PolicySpec::default()
    };
    spec.tiers[0].share_percent = 60;
    spec.tiers[1].share_percent = 25;
    let new = spec.build().unwrap();
    sim.sched.set_policy(sim.now, Arc::new(new.clone()));
    assert_eq!(sim.sched.policy_version(), 2);
    sim.run_for(100 * MS);
    // The first 200 decisions after the change already follow 60/25/15.
    let first: Vec<_> = sim.sent[before..before + 200].to_vec();
    let high = first
        .iter()
        .filter(|s| new.tier_of(s.priority) == 0)
        .count();
    assert!(
        (116..=124).contains(&high),
        "High got {high} of the first 200 decisions"
    );
    let b = sim.tier_bytes(&new, 100 * MS, 200 * MS);
    let total: u64 = b.iter().sum();
    for (got, want) in b.iter().zip([0.60, 0.25, 0.15]) {
        assert!((*got as f64 / total as f64 - want).abs() < 0.005);
    }
    // No loss and no reordering across the change (the harness checks order).
    sim.assert_conserved();
}

#[test]
fn p7_moving_a_priority_to_another_tier_applies_to_queued_packets() {
    let mut s: Scheduler<u8> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let p0 = s.open(StreamConfig::with_priority(0)).unwrap();
    let p5 = s.open(StreamConfig::with_priority(5)).unwrap();
    for _ in 0..50 {
        s.enqueue(0, p0, 0, 1000).unwrap();
        s.enqueue(0, p5, 5, 1000).unwrap();
    }
    // Priority 0 joins a 90% tier with the High priorities; Medium keeps 10%.
    let spec = PolicySpec {
        version: 7,
        tiers: vec![
            TierSpec::new("Bulk", &[0, 1, 6, 7], 90),
            TierSpec::new("Medium", &[2, 3, 4, 5], 10),
        ],
        ..PolicySpec::default()
    };
    s.set_policy(0, Arc::new(spec.build().unwrap()));
    let mut served = [0; 8];
    for t in 0..20 {
        let Next::Packet(d) = s.dequeue(t) else {
            panic!("backlogged")
        };
        served[usize::from(d.packet)] += 1;
    }
    assert_eq!(
        (served[0], served[5]),
        (18, 2),
        "90/10 from the first decision on"
    );
}

#[test]
fn p7_lowering_max_queue_depth_applies_to_the_next_enqueue() {
    let mut s: Scheduler<u8> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for _ in 0..5 {
        s.enqueue(0, id, 0, 100).unwrap();
    }
    let spec = PolicySpec {
        version: 2,
        max_queue_depth: 5,
        ..PolicySpec::default()
    };
    s.set_policy(0, Arc::new(spec.build().unwrap()));
    let r = s.enqueue(0, id, 1, 100).unwrap_err();
    assert_eq!(r.reason, Rejection::Dropped(DropReason::QueueFull));
}
