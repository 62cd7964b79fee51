//! Starvation guard (S9).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{
    DropReason, Event, Next, Priority, RateCap, Scheduler, SchedulerConfig, StreamConfig, StreamId,
    TierSpec,
};
use sim::{MS, Offer, SEC, Sim, oracle, policy_with};
use std::sync::Arc;

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

/// A promoted stream that empties in the aging lane leaves it as a lingering mark: the
/// lane's push count when it left (see `wfq`). Demoted to its tier on the spot, it must
/// forget that mark: the lane's rounds turn over far more often than the tier's while
/// the tier's streams are all promoted, so read against the tier's counts the mark
/// would put the stream's next packet at the tail of the tier's round, behind every
/// backlogged stream, instead of serving it as a returning sparse stream (S4).
#[test]
fn s4_a_stream_that_empties_in_the_aging_lane_returns_to_its_tier_as_a_sparse_stream() {
    const AGING: u64 = 10 * MS;
    let policy = policy_with(|b| {
        b.aging_timeout_ns = Some(AGING);
        b.aqm = false;
    });
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(policy)).unwrap();
    let take = |s: &mut Scheduler<u32>, now: u64| -> StreamId {
        match s.dequeue(now) {
            Next::Packet(d) => d.stream,
            other => panic!("backlogged, got {other:?}"),
        }
    };
    // Four greedy P0 streams queue at t = 1 and wait out the aging timeout.
    let greedy: Vec<_> = (0..4)
        .map(|_| {
            let g = s.open(StreamConfig::with_priority(0)).unwrap();
            for i in 0..1_000 {
                s.enqueue(1, g, i, 1_000).unwrap();
            }
            g
        })
        .collect();
    // One check per call, paced at most every AGING / 16: all four are promoted, then
    // the lane turns its round over hundreds of times while the tier's stays still.
    let mut now = 1 + AGING;
    for _ in 0..1_000 {
        take(&mut s, now);
        now += 10_000;
    }
    assert_eq!(s.priority_stats(Priority::ALL[0]).promotions, 4);
    let lane = s.aging_lane_stats();
    assert!(
        lane.packets >= 800,
        "the lane served the promoted streams: {lane:?}"
    );
    // A sparse P0 stream's packet waits out the timeout alone in the tier: the next
    // call's check promotes it, and the lane serves it from its fresh list at once. It
    // empties in the lane and is demoted.
    let sparse = s.open(StreamConfig::with_priority(0)).unwrap();
    s.enqueue(now, sparse, 0, 200).unwrap();
    now += AGING;
    let promotions = s.priority_stats(Priority::ALL[0]).promotions;
    while take(&mut s, now) != sparse {}
    assert_eq!(
        s.priority_stats(Priority::ALL[0]).promotions,
        promotions + 1,
        "the sparse stream went out through the aging lane"
    );
    // A young P0 stream takes its fresh quantum in the tier and moves to its round.
    let young = s.open(StreamConfig::with_priority(0)).unwrap();
    for i in 0..200 {
        s.enqueue(now, young, i, 100).unwrap();
    }
    let mut young_sent = 0;
    while young_sent < 20 {
        young_sent += u32::from(take(&mut s, now) == young);
    }
    // The sparse stream's next packet comes at the tier's next turn, before the round.
    s.enqueue(now, sparse, 1, 200).unwrap();
    let mut young_before = 0;
    loop {
        let d = take(&mut s, now);
        if d == sparse {
            break;
        }
        assert!(d == young || greedy.contains(&d), "unexpected stream {d:?}");
        young_before += u32::from(d == young);
    }
    assert_eq!(
        young_before, 0,
        "a returning sparse stream is served at its tier's next turn, not behind its round"
    );
}

/// A P0 stream capped at 40 bytes a second (bucket 1500 bytes, full at the start) with
/// five 1000-byte packets queued at 0, the caller asking again when told to, for a
/// minute. The first packet goes at once; the second waits for tokens until 12.5 s,
/// past the bound of 11 s (10 s timeout + 1 s). With `aging_on_at`, aging starts off
/// and a policy turning it on comes at that time, while the stream is parked. Returns
/// the packets sent, those reclaimed (with reasons) and the time of the last call.
fn capped_low_stream(aging_on_at: Option<u64>) -> (Vec<u32>, Vec<(u32, DropReason)>, u64) {
    let policy = |aging: bool, version: u64| {
        Arc::new(policy_with(|b| {
            b.aging_timeout_ns = aging.then_some(10 * SEC);
            b.max_packet_bytes = 1_500;
            b.version = version;
        }))
    };
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), policy(aging_on_at.is_none(), 1)).unwrap();
    let cap = RateCap {
        rate_bps: 320,
        burst_bytes: Some(1_500),
    };
    let id = s
        .open(StreamConfig {
            cap: Some(cap),
            ..StreamConfig::with_priority(0)
        })
        .unwrap();
    for i in 0..5 {
        s.enqueue(0, id, i, 1_000).unwrap();
    }
    let (mut now, mut switch) = (0, aging_on_at);
    let mut sent = Vec::new();
    while now <= 60 * SEC {
        match s.dequeue(now) {
            Next::Packet(d) => {
                assert!(d.sojourn_ns <= 11 * SEC, "sent after {} ns", d.sojourn_ns);
                sent.push(d.packet);
            }
            Next::Wait { until_ns } => {
                assert!(until_ns > now, "a wait must move time on");
                now = until_ns;
                if let Some(at) = switch.take_if(|at| *at < until_ns) {
                    s.set_policy(at, policy(true, 2));
                    now = at;
                }
            }
            Next::Idle => break,
        }
    }
    let st = s.stream_stats(id).unwrap();
    assert!(st.is_conserved() && st.queued == 0, "{st:?}");
    let reclaimed = std::iter::from_fn(|| s.pop_reclaimed())
        .map(|r| (r.packet, r.reason))
        .collect();
    (sent, reclaimed, now)
}

/// The four held packets are dropped as `expired` when they pass the bound (the wheel
/// releases at most one 65.5 us tick late), not at 12.5 s when tokens would come.
fn assert_expired_at_the_bound(run: (Vec<u32>, Vec<(u32, DropReason)>, u64)) {
    let (sent, reclaimed, last) = run;
    assert_eq!(sent, [0]);
    let expired = DropReason::Expired;
    assert_eq!(
        reclaimed,
        [(1, expired), (2, expired), (3, expired), (4, expired)]
    );
    assert!(
        last > 11 * SEC && last <= 11 * SEC + MS,
        "the expiry was handled at {last} ns"
    );
}

#[test]
fn s9_a_lowest_tier_packet_held_by_its_stream_cap_is_dropped_when_it_expires() {
    // Before the fix the packets expired when the tokens came (then 15 s for a 100 B/s cap).
    assert_expired_at_the_bound(capped_low_stream(None));
}

#[test]
fn s9_a_policy_turning_aging_on_rewakes_a_lowest_tier_stream_its_cap_parked() {
    // Parked at 0 until 12.5 s under a policy without aging; aging comes on at 1 s.
    assert_expired_at_the_bound(capped_low_stream(Some(SEC)));
}

/// Found by a red-team review: a flat single-tier policy with aging on promoted a P0
/// stream with a deep queue into the aging lane, whose share is the lowest tier's
/// (here the whole link), so it took half the link and every other stream of the one
/// tier lost half its share (P1 -49.5%, P7 -49.6%). A single tier has nothing to age
/// into: aging is off there, and every stream keeps its weighted share.
#[test]
fn s9_a_single_tier_policy_ages_nothing_and_keeps_its_weighted_shares() {
    let policy = policy_with(|b| {
        b.tiers = vec![TierSpec::new("Flat", &[0, 1, 2, 3, 4, 5, 6, 7], 100)];
        b.aging_timeout_ns = Some(100 * MS);
        b.aqm = false;
        b.disconnect = false;
    });
    let mut sim = Sim::new(policy.clone(), LINK);
    let p0 = sim.saturate(0, 1000);
    sim.sources[p0].offer = Offer::Saturate { queued: 4_000 };
    let p1 = sim.saturate(1, 1000);
    let p7 = sim.saturate(7, 1000);
    sim.run_for(7 * SEC);
    sim.assert_conserved();
    let bytes = sim.source_bytes(2 * SEC, 7 * SEC);
    let want = oracle(
        &policy,
        LINK as f64,
        &[(0, f64::INFINITY), (1, f64::INFINITY), (7, f64::INFINITY)],
    );
    for (i, p) in [(p0, 0), (p1, 1), (p7, 7)] {
        let got = bytes[i] as f64 * 8.0 / 5.0;
        assert!(
            (got / want[i] - 1.0).abs() < 0.02,
            "P{p}: {:.3} Mbit/s against {:.3}",
            got / 1e6,
            want[i] / 1e6
        );
    }
    assert_eq!(sim.sched.aging_lane_stats().packets, 0, "nothing promoted");
    let st = sim.sched.stream_stats(sim.sources[p0].stream).unwrap();
    assert_eq!(st.dropped_expired, 0, "no expiry bound without aging");
}
