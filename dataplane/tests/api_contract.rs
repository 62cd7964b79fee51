//! The public API's contract: time-stamped policy adoption (S5), the `Priority` newtype,
//! handles that never alias, new and returning sparse streams served without waiting a
//! round (S3/S4), disconnection as a policy option (S8), error types and tier lookup.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::collections::HashSet;
use std::error::Error;
use std::sync::Arc;

use qos_dataplane::sched::{
    DropReason, Event, LinkRate, Next, Policy, PolicySpec, Priority, RefuseReason, Rejected,
    Rejection, Scheduler, SchedulerConfig, StreamConfig, StreamError, StreamId,
};
use sim::{MS, Offer, SEC, Sim};

fn sched_with(spec: PolicySpec, config: SchedulerConfig) -> Scheduler<u64> {
    Scheduler::new(config, Arc::new(spec.build().unwrap())).unwrap()
}

// ----- S5: set_policy(now, ..) credits the gap at the old rate --------------------------

/// Drains `s` on an infinitely fast link from `now` until the next packet would leave at
/// or after `until`, logging `(time, len)` of every packet. Returns the time it stopped
/// at (the last time the scheduler saw).
fn drain_paced(s: &mut Scheduler<u64>, mut now: u64, until: u64, log: &mut Vec<(u64, u32)>) -> u64 {
    loop {
        match s.dequeue(now) {
            Next::Packet(d) => log.push((now, d.len)),
            Next::Wait { until_ns } => {
                assert!(until_ns > now, "a wait lies in the future");
                if until_ns >= until {
                    return now;
                }
                now = until_ns;
            }
            Next::Idle => panic!("the stream is backlogged"),
        }
    }
}

/// Largest excess, in bytes, of what was sent in any interval `[a, b]` of `log` over
/// `credit(a, b) + burst`, where credit accrues at `r1` before `switch` and `r2` after.
/// Exact in integers: bytes are scaled to bit-nanoseconds per second.
fn worst_excess(log: &[(u64, u32)], switch: u64, r1: u64, r2: u64, burst: u64) -> i128 {
    let credit = |a: u64, b: u64| -> i128 {
        let before = i128::from(b.min(switch)) - i128::from(a.min(switch));
        let after = i128::from(b.max(switch)) - i128::from(a.max(switch));
        i128::from(r1) * before + i128::from(r2) * after
    };
    let scale = 8 * i128::from(SEC);
    let mut worst = i128::MIN;
    for (i, &(a, _)) in log.iter().enumerate() {
        let mut bytes = 0i128;
        for &(b, len) in &log[i..] {
            bytes += i128::from(len);
            let excess = bytes * scale - credit(a, b) - i128::from(burst) * scale;
            worst = worst.max(excess);
        }
    }
    // Back to bytes, rounding up so that any positive excess shows.
    if worst > 0 {
        (worst + scale - 1) / scale
    } else {
        worst / scale
    }
}

/// Runs a backlogged stream paced at `r1`, leaves the scheduler alone for `gap` ns, then
/// adopts `r2` with `set_policy(T, ..)` and drains for `after` ns. Returns the send log,
/// the switch time `T` and the burst.
fn rate_change_run(r1: u64, r2: u64, gap: u64, after: u64) -> (Vec<(u64, u32)>, u64, u64) {
    let burst = 10_000;
    let spec = |version, rate_bps| PolicySpec {
        version,
        link: Some(LinkRate {
            rate_bps,
            burst_bytes: burst,
        }),
        aqm: false,
        ..PolicySpec::default()
    };
    let config = SchedulerConfig {
        max_streams: 4,
        max_packets: 1 << 14,
        event_capacity: 64,
    };
    let mut s = sched_with(spec(1, r1), config);
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..9_000 {
        s.enqueue(0, id, i, 1_000).unwrap();
    }
    let mut log = Vec::new();
    let last_seen = drain_paced(&mut s, 0, 500 * MS, &mut log);
    // The caller's thread was busy: the scheduler sees no call until T.
    let switch = last_seen + gap;
    s.set_policy(switch, Arc::new(spec(2, r2).build().unwrap()));
    drain_paced(&mut s, switch, switch + after, &mut log);
    assert!(s.shard_stats().is_conserved());
    (log, switch, burst)
}

#[test]
fn s5_set_policy_credits_the_gap_before_now_at_the_old_rate() {
    // 1 Mbit/s, then 100 Mbit/s adopted 20 ms after the scheduler last saw a call.
    // Over those 20 ms the old rate earns 2.5 kB; crediting them at the new rate would
    // earn a full 10 kB bucket, 7.5 kB too much for any interval starting before the
    // gap.
    let (r1, r2) = (1_000_000, 100_000_000);
    let (log, switch, burst) = rate_change_run(r1, r2, 20 * MS, 50 * MS);
    let worst = worst_excess(&log, switch, r1, r2, burst);
    assert!(
        worst <= 0,
        "sent {worst} bytes more than rate*t + burst in some interval"
    );
    // Intervals entirely after T: the new rate plus the burst.
    let after: Vec<(u64, u32)> = log.iter().copied().filter(|&(t, _)| t >= switch).collect();
    let worst_after = worst_excess(&after, switch, r2, r2, burst);
    assert!(worst_after <= 0, "after T: excess {worst_after} bytes");
    // The new rate is in force from T: 50 ms at 100 Mbit/s is 625 kB.
    let bytes_after: u64 = after.iter().map(|&(_, l)| u64::from(l)).sum();
    assert!(
        (620_000..=640_000).contains(&bytes_after),
        "{bytes_after} bytes in the 50 ms after T"
    );
    // What the gap earned, at the old rate: the first burst after T is at most
    // 2.5 kB (plus one packet of slack for the tokens held at the last call).
    let first_ms: u64 = after
        .iter()
        .filter(|&&(t, _)| t == switch)
        .map(|&(_, l)| u64::from(l))
        .sum();
    assert!(
        first_ms <= 2_500 + 1_000,
        "{first_ms} bytes left at T: the gap was credited at the new rate"
    );
}

#[test]
fn s5_set_policy_to_a_slower_rate_applies_from_now() {
    let (r1, r2) = (100_000_000, 1_000_000);
    let (log, switch, burst) = rate_change_run(r1, r2, 3 * MS, 300 * MS);
    let worst = worst_excess(&log, switch, r1, r2, burst);
    assert!(worst <= 0, "excess {worst} bytes");
    let after: Vec<(u64, u32)> = log.iter().copied().filter(|&(t, _)| t >= switch).collect();
    let worst_after = worst_excess(&after, switch, r2, r2, burst);
    assert!(worst_after <= 0, "after T: excess {worst_after} bytes");
}

// ----- the Priority newtype --------------------------------------------------------------

#[test]
fn priority_is_checked_at_the_boundary() {
    assert_eq!(Priority::new(8), None);
    assert_eq!(Priority::new(7), Some(Priority::MAX));
    assert_eq!(Priority::new(0).map(Priority::get), Some(0));
    let err = Priority::try_from(255).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("priority") && msg.contains("255"),
        "{msg:?} names the field and the value"
    );
    let boxed: Box<dyn Error> = Box::new(err);
    assert_eq!(boxed.to_string(), msg);
    assert_eq!(Priority::try_from(3).map(u8::from), Ok(3));
    assert_eq!(StreamConfig::with_priority(200).priority, Priority::MAX);
    assert_eq!(StreamConfig::with_priority(8).priority, Priority::MAX);
    assert_eq!(StreamConfig::with_priority(5).priority.get(), 5);
    assert_eq!(StreamConfig::with_priority(5).weight, None);
}

#[test]
fn priority_stats_and_histograms_are_indexed_by_priority() {
    let mut s = sched_with(PolicySpec::default(), SchedulerConfig::default());
    let p2 = s.open(StreamConfig::with_priority(2)).unwrap();
    let p6 = s.open(StreamConfig::with_priority(6)).unwrap();
    for i in 0..3 {
        s.enqueue(1_000, p2, i, 100).unwrap();
    }
    for i in 0..5 {
        s.enqueue(2_000, p6, 10 + i, 300).unwrap();
    }
    let mut sojourn = [Vec::new(), Vec::new()];
    let mut now = 50_000;
    while let Next::Packet(d) = s.dequeue(now) {
        let k = usize::from(d.priority == Priority::ALL[6]);
        sojourn[k].push(d.sojourn_ns);
        now += 10_000;
    }
    let (st2, st6) = (
        s.priority_stats(Priority::ALL[2]),
        s.priority_stats(Priority::ALL[6]),
    );
    assert_eq!(
        (st2.enqueued, st2.dequeued, st2.dequeued_bytes),
        (3, 3, 300)
    );
    assert_eq!(
        (st6.enqueued, st6.dequeued, st6.dequeued_bytes),
        (5, 5, 1_500)
    );
    for p in [0, 1, 3, 4, 5, 7] {
        assert_eq!(s.priority_stats(Priority::ALL[p]).enqueued, 0, "P{p}");
        assert_eq!(s.sojourn_histogram(Priority::ALL[p]).len(), 0, "P{p}");
    }
    for (k, p) in [(0, 2), (1, 6)] {
        let h = s.sojourn_histogram(Priority::ALL[p]);
        assert_eq!(h.len(), sojourn[k].len() as u64, "P{p}");
        let max = *sojourn[k].iter().max().unwrap();
        let min = *sojourn[k].iter().min().unwrap();
        assert!(h.equivalent(h.max(), max), "P{p}: {} vs {max}", h.max());
        assert!(h.equivalent(h.min(), min), "P{p}: {} vs {min}", h.min());
    }
}

// ----- handles never alias ---------------------------------------------------------------

#[test]
fn handles_never_alias_across_more_than_65536_reuses_of_a_slot() {
    let config = SchedulerConfig {
        max_streams: 1,
        max_packets: 16,
        event_capacity: 16,
    };
    let mut s = sched_with(PolicySpec::default(), config);
    let first = s.open(StreamConfig::with_priority(3)).unwrap();
    s.close(first).unwrap();
    let generation: u32 = first.generation();
    let mut seen = HashSet::new();
    seen.insert(first.to_raw());
    for round in 0..70_000u64 {
        let id = s.open(StreamConfig::with_priority(3)).unwrap();
        assert_eq!(id.index(), first.index(), "one slot only");
        assert!(
            seen.insert(id.to_raw()),
            "round {round}: handle {id} reissued"
        );
        // The stale handle is refused, and nothing reaches the new stream.
        let r = s.enqueue(round, first, round, 100).unwrap_err();
        assert!(
            matches!(
                r.reason,
                Rejection::Refused(RefuseReason::UnknownStream | RefuseReason::Closed)
            ),
            "round {round}: {r:?}"
        );
        assert_eq!(r.packet, round, "the packet comes back");
        assert!(s.stream_stats(first).is_none(), "round {round}");
        assert!(
            matches!(
                s.update(first, StreamConfig::with_priority(1)),
                Err(StreamError::Unknown(_) | StreamError::Closed(_))
            ),
            "round {round}"
        );
        // A forged handle one full 24-bit generation cycle ahead names nothing either.
        let forged = StreamId::from_raw(id.to_raw() + (1 << (32 + 24)));
        assert!(
            s.enqueue(round, forged, round, 100).is_err(),
            "round {round}"
        );
        // The live handle works and holds only its own packet.
        s.enqueue(round, id, round, 100).unwrap();
        let st = s.close(id).unwrap();
        assert_eq!((st.enqueued, st.dropped_closed), (1, 1), "round {round}");
        assert!(s.close(first).is_err());
        let r = s.pop_reclaimed().unwrap();
        assert_eq!(
            (r.stream, r.packet, r.reason),
            (id, round, DropReason::Closed)
        );
    }
    let shard = s.shard_stats();
    assert!(shard.is_conserved(), "{shard:?}");
    assert_eq!(shard.totals.enqueued, 70_000);
    assert_eq!(shard.refused.iter().sum::<u64>(), 2 * 70_000);
    assert!(generation < 1 << 24);
}

// ----- S3/S4: new and returning sparse streams do not wait a round ----------------------

const LINK: u64 = 100_000_000;
/// One 1500-byte packet on the 100 Mbit/s link.
const TX_1500: u64 = 1_500 * 8 * SEC / LINK;

/// 50 saturated P4 streams of 1500-byte packets on a 100 Mbit/s link.
fn fifty_greedy() -> Sim {
    let mut sim = Sim::default_policy(LINK);
    for _ in 0..50 {
        sim.saturate(4, 1_500);
    }
    sim
}

#[test]
fn s3_s4_a_new_stream_is_served_within_two_packet_times_not_after_a_round() {
    let mut sim = fifty_greedy();
    sim.run_for(300 * MS);
    let start = sim.now;
    // A new P4 stream opened mid-run sends one packet 1 ms later.
    let new = sim.add(
        StreamConfig::with_priority(4),
        1_500,
        Offer::Rate {
            interval_ns: 10 * SEC,
            next_at: start + MS,
        },
    );
    sim.run_for(100 * MS);
    let sojourns = sim.sojourns(new);
    assert_eq!(sojourns.len(), 1, "one packet sent and delivered");
    // A DRR round of the 50 greedy streams: a P4 quantum (4 x 1514 B) each.
    let round = 50 * 4 * 1_514 * 8 * SEC / LINK;
    assert!(
        sojourns[0] <= 2 * TX_1500,
        "new stream waited {} ns, {:.1} packet times (a round is >= {round} ns)",
        sojourns[0],
        sojourns[0] as f64 / TX_1500 as f64
    );
    sim.assert_conserved();
}

#[test]
fn s3_s4_a_sparse_stream_returning_after_idling_is_served_within_two_packet_times() {
    let mut sim = fifty_greedy();
    // One packet every 100 ms: idle far longer than a round of the greedy streams.
    let sparse = sim.add(
        StreamConfig::with_priority(4),
        1_500,
        Offer::Rate {
            interval_ns: 100 * MS,
            next_at: 50 * MS,
        },
    );
    sim.run_for(1_020 * MS);
    let sojourns = sim.sojourns(sparse);
    assert_eq!(sojourns.len(), 10, "every packet delivered");
    let worst = *sojourns.iter().max().unwrap();
    assert!(
        worst <= 2 * TX_1500,
        "sparse stream waited up to {worst} ns ({:.1} packet times): {sojourns:?}",
        worst as f64 / TX_1500 as f64
    );
    let st = sim.sched.stream_stats(sim.sources[sparse].stream).unwrap();
    assert_eq!((st.enqueued, st.dequeued, st.dropped_aqm), (10, 10, 0));
    sim.assert_conserved();
}

// ----- S8: disconnection is a policy option ----------------------------------------------

/// What each `enqueue` of [`overflow_run`] returned, in order.
type Outcomes = Vec<Result<(), Rejected<u64>>>;

fn overflow_run(disconnect: bool) -> (Scheduler<u64>, StreamId, Outcomes) {
    let spec = PolicySpec {
        max_queue_depth: 10,
        critical_strikes: 3,
        disconnect,
        ..PolicySpec::default()
    };
    let mut s = sched_with(spec, SchedulerConfig::default());
    let id = s.open(StreamConfig::with_priority(5)).unwrap();
    let mut results = Vec::new();
    // Two pushes per dequeue: the queue stays full and the sender ignores every signal.
    for i in 0..1_000u64 {
        results.push(s.enqueue(i, id, 2 * i, 200));
        results.push(s.enqueue(i, id, 2 * i + 1, 200));
        let _ = s.dequeue(i);
    }
    (s, id, results)
}

#[test]
fn s8_with_disconnect_off_a_stream_pushing_into_a_full_queue_is_only_tail_dropped() {
    let (mut s, id, results) = overflow_run(false);
    let accepted = results.iter().filter(|r| r.is_ok()).count() as u64;
    let mut dropped = 0u64;
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.reason, Rejection::Dropped(DropReason::QueueFull));
        dropped += 1;
    }
    let st = s.stream_stats(id).unwrap();
    assert!(!st.disconnected, "never disconnected");
    assert!(
        dropped > 900,
        "the sender kept overflowing: {dropped} tail drops"
    );
    assert_eq!(st.dropped_queue_full, dropped);
    assert_eq!(st.dropped_disconnected, 0);
    assert_eq!(st.enqueued, accepted + dropped);
    assert!(st.is_conserved(), "{st:?}");
    let ps = s.priority_stats(Priority::ALL[5]);
    assert_eq!(ps.dropped[DropReason::QueueFull as usize], dropped);
    assert_eq!((ps.criticals, ps.disconnects), (dropped, 0));
    // A CRITICAL for every tail drop, to the end; never a disconnect.
    let events: Vec<Event> = std::iter::from_fn(|| s.pop_event()).collect();
    let criticals: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::BackpressureCritical { stream, strike, .. } if *stream == id => Some(*strike),
            _ => None,
        })
        .collect();
    assert_eq!(criticals.len() as u64, dropped);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "no disconnect event"
    );
    assert!(
        criticals.windows(2).all(|w| w[1] >= w[0]),
        "strikes only grow in one episode"
    );
    let shard = s.shard_stats();
    assert!(shard.is_conserved(), "{shard:?}");
    assert_eq!(shard.events_lost, 0);
    // It still works: its queue drains.
    let mut served = 0;
    while matches!(s.dequeue(2_000), Next::Packet(_)) {
        served += 1;
    }
    assert_eq!(served, st.queued);
    assert!(s.enqueue(2_001, id, 0, 200).is_ok());
}

#[test]
fn s8_with_disconnect_on_the_stream_is_disconnected_after_critical_strikes() {
    let (mut s, id, results) = overflow_run(true);
    let outcome: Vec<Rejection> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|r| r.reason))
        .take(5)
        .collect();
    let full = Rejection::Dropped(DropReason::QueueFull);
    assert_eq!(
        outcome,
        [
            full,
            full,
            full,
            Rejection::Dropped(DropReason::Disconnected),
            Rejection::Refused(RefuseReason::Disconnected),
        ],
        "three CRITICALs, then disconnected, then refused"
    );
    let st = s.stream_stats(id).unwrap();
    assert!(st.disconnected);
    assert_eq!(st.dropped_queue_full, 3);
    let events: Vec<Event> = std::iter::from_fn(|| s.pop_event()).collect();
    let disc: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { stream, dropped } if *stream == id => Some(*dropped),
            _ => None,
        })
        .collect();
    assert_eq!(disc.len(), 1);
    assert_eq!(u64::from(disc[0]), st.dropped_disconnected);
    while s.pop_reclaimed().is_some() {}
    assert!(s.shard_stats().is_conserved());
}

// ----- error types, tier lookup -----------------------------------------------------------

fn describe(e: Box<dyn Error>) -> String {
    e.to_string()
}

#[test]
fn rejected_is_a_displayable_std_error() {
    let spec = PolicySpec {
        max_queue_depth: 1,
        ..PolicySpec::default()
    };
    let mut s = sched_with(spec, SchedulerConfig::default());
    let id = s.open(StreamConfig::with_priority(2)).unwrap();
    s.enqueue(0, id, 1, 100).unwrap();
    let dropped = s.enqueue(0, id, 2, 100).unwrap_err();
    assert_eq!(dropped.to_string(), "packet dropped: queue_full");
    let refused = s.enqueue(0, id, 3, 0).unwrap_err();
    assert_eq!(format!("{refused}"), "packet refused: invalid_length");
    assert_eq!(
        describe(Box::new(refused)),
        "packet refused: invalid_length"
    );
    // It converts with `?` into the usual error box.
    let try_send = |s: &mut Scheduler<u64>| -> Result<(), Box<dyn Error>> {
        s.enqueue(0, id, 4, 100)?;
        Ok(())
    };
    let e = try_send(&mut s).unwrap_err();
    assert_eq!(e.to_string(), "packet dropped: queue_full");
    assert!(e.source().is_none());
}

#[test]
fn tier_stats_is_none_past_the_last_tier() {
    let mut s = sched_with(PolicySpec::default(), SchedulerConfig::default());
    let ids: Vec<StreamId> = (0..8)
        .map(|p| s.open(StreamConfig::with_priority(p)).unwrap())
        .collect();
    for (p, &id) in ids.iter().enumerate() {
        for i in 0..=p as u64 {
            s.enqueue(0, id, i, 100).unwrap();
        }
    }
    assert!(s.tier_stats(3).is_none());
    assert!(s.tier_stats(usize::MAX).is_none());
    // Tier totals sum their priorities: High {6,7} 7+8, Medium {2..5} 3+4+5+6, Low 1+2.
    let enq: Vec<u64> = (0..3)
        .map(|t| s.tier_stats(t).unwrap().totals.enqueued)
        .collect();
    assert_eq!(enq, [15, 18, 3]);
    s.set_policy(0, Arc::new(Policy::classes5()));
    assert!(s.tier_stats(4).is_some());
    assert!(s.tier_stats(5).is_none());
    let enq: Vec<u64> = (0..5)
        .map(|t| s.tier_stats(t).unwrap().totals.enqueued)
        .collect();
    assert_eq!(enq, [8, 7, 11, 7, 3]);
}
