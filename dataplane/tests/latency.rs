//! Latency budgets and isolation (S10, P6).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{DropReason, Event, Priority};
use sim::{MS, SEC, Sim, policy_with};

const LINK: u64 = 100_000_000;

#[test]
fn s10_p7_sojourn_stays_within_budget_while_medium_and_low_offer_10x_the_link() {
    let mut sim = Sim::default_policy(LINK);
    let voice = sim.rate(7, 200, 5_000_000);
    for p in [2u8, 3, 4, 5] {
        sim.rate(p, 1500, 2 * LINK);
    }
    for p in [0u8, 1] {
        sim.rate(p, 1500, LINK);
    }
    sim.run_for(2 * SEC);
    let mut sojourns = sim.sojourns(voice);
    sojourns.sort_unstable();
    assert!(
        sojourns.len() > 6000,
        "voice was served: {}",
        sojourns.len()
    );
    let p999 = sojourns[sojourns.len() * 999 / 1000];
    // One MTU at 100 Mbit/s is 120 us; P6 allows one batch + one MTU.
    assert!(p999 <= 2 * 120_000, "P7 p99.9 sojourn {p999} ns");
    assert!(
        *sojourns.last().unwrap() < 10 * MS,
        "P7 max sojourn over budget"
    );
    let h = sim.sched.sojourn_histogram(Priority::ALL[7]);
    assert_eq!(
        h.len(),
        sojourns.len() as u64,
        "histogram records every P7 packet"
    );
    assert!(h.value_at_quantile(0.999) <= 2 * 120_000 + 1_000);
    assert_eq!(
        sim.sched.priority_stats(Priority::ALL[7]).budget_violations,
        0
    );
    let mut violations = Vec::new();
    while let Some(e) = sim.sched.pop_event() {
        if let Event::BudgetViolation { priority, .. } = e {
            violations.push(priority.get());
        }
    }
    assert!(!violations.contains(&7), "no P7 budget violation");
    // Queue-delay control (S14, on by default) keeps the overloaded Medium priorities
    // within their budgets: their excess is dropped as `aqm`, not queued for seconds.
    assert!(
        !violations.iter().any(|p| (2..=5).contains(p)),
        "{violations:?}"
    );
    let aqm: u64 = (2..=5)
        .map(|p| sim.sched.priority_stats(Priority::ALL[p]).dropped[DropReason::Aqm as usize])
        .sum();
    assert!(aqm > 0, "the excess was dropped by AQM");
    sim.assert_conserved();
}

#[test]
fn s10_without_aqm_overloaded_priorities_blow_their_budgets_and_it_is_reported() {
    let mut sim = Sim::new(policy_with(|b| b.aqm = false), LINK);
    for p in [2u8, 3, 4, 5] {
        sim.rate(p, 1500, 2 * LINK);
    }
    sim.run_for(2 * SEC);
    let violations: Vec<u8> = std::iter::from_fn(|| sim.sched.pop_event())
        .filter_map(|e| match e {
            Event::BudgetViolation { priority, .. } => Some(priority.get()),
            _ => None,
        })
        .collect();
    assert!(
        violations.contains(&2) && violations.contains(&5),
        "{violations:?}"
    );
    sim.assert_conserved();
}

#[test]
fn s10_budget_violation_event_names_priority_and_counts() {
    // P4 budget 1 ms, offered 2x its share: its queue builds and p95 exceeds 1 ms.
    let policy = policy_with(|b| {
        b.latency_budget_ns[4] = Some(MS);
        b.budget_window_ns = 100 * MS;
        b.aqm = false;
    });
    let mut sim = Sim::new(policy, LINK);
    sim.rate(4, 1000, 2 * LINK);
    sim.run_for(350 * MS);
    let v: Vec<Event> = std::iter::from_fn(|| sim.sched.pop_event())
        .filter(|e| matches!(e, Event::BudgetViolation { .. }))
        .collect();
    assert!(v.len() >= 2, "one per window after the queue built: {v:?}");
    for e in v {
        let Event::BudgetViolation {
            priority,
            samples,
            over_budget,
            budget_ns,
        } = e
        else {
            unreachable!()
        };
        assert_eq!((priority.get(), budget_ns), (4, MS));
        assert!(over_budget * 20 > samples);
    }
    assert!(sim.sched.priority_stats(Priority::ALL[4]).budget_violations > 0);
}
