//! Starvation guard (S9).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{Event, Priority};
use sim::{MS, Offer, SEC, Sim, policy_with};

const LINK: u64 = 100_000_000;

/// A Low stream with a long queue behind saturated Medium traffic: its oldest packet
/// outlives `timeout`.
fn run(timeout_ns: u64) -> (Sim, usize) {
    let policy = policy_with(|b| b.aging_timeout_ns = Some(timeout_ns));
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
    // Without aging Low gets 20% of 100 Mbit/s (High idle) = 2.5k packets/s: its
    // 5000-deep queue is 2 s old. Promoted, the stream is served by the aging lane at
    // twice the Low share (its tier has nothing else queued): 30 of 90, a third of the
    // link, 4.2k packets/s, so the same queue waits about 1.2 s: the aging bound
    // (timeout + 1 s), beyond which packets are dropped as `expired` rather than sent.
    let (mut sim, low) = run(200 * MS);
    let id = sim.sources[low].stream;
    let events: Vec<Event> = std::iter::from_fn(|| sim.sched.pop_event()).collect();
    assert!(
        events.contains(&Event::Promoted {
            stream: id,
            priority: Priority::ALL[1],
        }),
        "no promotion event in {} events",
        events.len()
    );
    assert!(sim.sched.priority_stats(Priority::ALL[1]).promotions >= 1);
    let lane = sim.sched.aging_lane_stats();
    assert!(lane.bytes > 0, "the aging lane served the promoted stream");
    let total: u64 = sim.sent.iter().map(|s| u64::from(s.len)).sum();
    let low_bytes: u64 = sim
        .sent
        .iter()
        .filter(|s| s.stream == id && s.at >= SEC)
        .map(|s| u64::from(s.len))
        .sum();
    let late: u64 = sim
        .sent
        .iter()
        .filter(|s| s.at >= SEC)
        .map(|s| u64::from(s.len))
        .sum();
    let share = low_bytes as f64 / late as f64;
    assert!(
        share > 0.30,
        "promoted Low share {share:.3} of the link in the second half, expected about 1/3 (> 20% unpromoted); {total} bytes sent"
    );
    let worst = sim.worst_sojourn(low);
    assert!(worst <= 1_200 * MS, "worst served Low sojourn {worst} ns");
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
    assert_eq!(sim.sched.priority_stats(Priority::ALL[1]).promotions, 0);
    let worst = sim.worst_sojourn(low);
    assert!(worst > 1_800 * MS, "worst Low sojourn {worst} ns");
}
