//! Starvation guard (S9).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{Event, Policy};
use sim::{MS, Offer, SEC, Sim, policy_with};

const LINK: u64 = 100_000_000;

/// A Low stream with a long queue behind saturated Medium traffic: its oldest packet
/// outlives `timeout`.
fn run(timeout_ns: u64) -> (Sim, usize) {
    let policy = policy_with(|b| b.aging_timeout_ns = timeout_ns);
    let mut sim = Sim::new(policy, LINK);
    let low = sim.saturate(1, 1000);
    sim.sources[low].offer = Offer::Saturate { queued: 5_000 };
    sim.saturate(3, 1000);
    sim.saturate(4, 1000);
    sim.run_for(2 * SEC);
    (sim, low)
}

#[test]
fn s9_low_packet_older_than_aging_timeout_is_promoted() {
    // Low gets 20% of 100 Mbit/s = 2.5k packets/s: a 5000-deep queue is 2 s old.
    let (mut sim, low) = run(200 * MS);
    let id = sim.sources[low].stream;
    let events: Vec<Event> = std::iter::from_fn(|| sim.sched.pop_event()).collect();
    assert!(
        events.contains(&Event::Promoted {
            stream: id,
            from: 1,
            to: 4
        }),
        "no promotion event in {} events",
        events.len()
    );
    assert!(sim.sched.priority_stats(1).promotions >= 1);
    // While promoted it is served by the Medium tier (counted where served), at weight
    // 16 of 40 in a tier that now has the whole link: 5k packets/s instead of 2.5k, so
    // the 5000-deep queue it keeps waits ~1 s instead of ~2 s (see the next test).
    let p = Policy::default();
    let medium = sim.sched.tier_stats(p.tier_of(4));
    let medium_own = medium.totals.dequeued_bytes;
    assert!(
        medium.served.bytes > medium_own,
        "promoted Low bytes were served by Medium"
    );
    let worst = sim.worst_sojourn(low);
    assert!(worst < 1_250 * MS, "worst Low sojourn {worst} ns");
    assert!(
        sim.sent.iter().all(|s| s.stream != id || s.priority == 1),
        "counted as P1"
    );
    sim.assert_conserved();
}

#[test]
fn s9_without_aging_the_same_queue_waits_for_seconds() {
    let (mut sim, low) = run(100 * SEC);
    assert!(
        std::iter::from_fn(|| sim.sched.pop_event()).all(|e| !matches!(e, Event::Promoted { .. }))
    );
    assert_eq!(sim.sched.priority_stats(1).promotions, 0);
    let worst = sim.worst_sojourn(low);
    assert!(worst > 1_800 * MS, "worst Low sojourn {worst} ns");
}
