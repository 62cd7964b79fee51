//! Any sequence of open / enqueue / dequeue / update / close / reopen / advance-time
//! (by up to 2 ms, or by up to 2.4 hours) / policy change (tier remaps, a flat policy
//! without aging) keeps S11 exact (checked against the test's own bookkeeping), never
//! panics, never loses, duplicates or reorders a packet, never sends a packet of the
//! lowest tier after more than the aging timeout + 1 s (S9), and never exceeds the S5
//! pacing bound; and afterwards every packet still queued comes out (no stream is
//! stranded off the service lists).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use qos_dataplane::sched::{
    BatchEnd, Dequeued, LinkRate, Next, Policy, PolicySpec, Priority, RateCap, Rejection,
    Scheduler, SchedulerConfig, StreamConfig, StreamId, TierSpec,
};

#[derive(Clone, Debug)]
enum Op {
    Open {
        prio: u8,
        weight: Option<u16>,
        capped: bool,
    },
    Enqueue {
        stream: usize,
        len: u32,
    },
    Burst {
        stream: usize,
        n: u8,
    },
    Dequeue {
        n: u8,
    },
    /// One `dequeue_batch` of up to `n`.
    DequeueBatch {
        n: u8,
    },
    Update {
        stream: usize,
        prio: u8,
        capped: bool,
    },
    Close {
        stream: usize,
    },
    Reopen {
        stream: usize,
    },
    Advance {
        ns: u64,
    },
    /// A long silence, 1 s to 2.4 h: past the aging bound, CoDel's staleness sweep
    /// (18 min) and the wrap of its stored times (~36 min), many revolutions of the cap
    /// wheel.
    Jump {
        ns: u64,
    },
    /// Installs policy `which % 4` of [`policy`].
    SetPolicy {
        which: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..8, prop::option::of(1u16..300), any::<bool>())
            .prop_map(|(prio, weight, capped)| Op::Open { prio, weight, capped }),
        6 => (0usize..8, 0u32..1600).prop_map(|(stream, len)| Op::Enqueue { stream, len }),
        2 => (0usize..8, 1u8..20).prop_map(|(stream, n)| Op::Burst { stream, n }),
        4 => (1u8..16).prop_map(|n| Op::Dequeue { n }),
        2 => (1u8..16).prop_map(|n| Op::DequeueBatch { n }),
        1 => (0usize..8, 0u8..8, any::<bool>()).prop_map(|(stream, prio, capped)| Op::Update { stream, prio, capped }),
        1 => (0usize..8).prop_map(|stream| Op::Close { stream }),
        1 => (0usize..8).prop_map(|stream| Op::Reopen { stream }),
        3 => (0u64..2_000_000).prop_map(|ns| Op::Advance { ns }),
        1 => ((1u64 << 30)..(1u64 << 43)).prop_map(|ns| Op::Jump { ns }),
        1 => any::<u8>().prop_map(|which| Op::SetPolicy { which }),
    ]
}

const RATE: u64 = 20_000_000;
const BURST: u64 = 3_000;

#[derive(Default)]
struct Book {
    accepted: u64,
    /// Bytes of the packets accepted or tail-dropped (the priorities' `offered_bytes`).
    offered_bytes: u64,
    returned_dropped: u64,
    returned_refused: u64,
    dequeued: u64,
    reclaimed: u64,
    outstanding: BTreeSet<u64>,
    last_seq: HashMap<StreamId, u64>,
    sends: Vec<(u64, u32)>,
    /// The policy in force, for the S9 bound on the lowest tier's sends.
    policy: Arc<Policy>,
}

fn cap(on: bool) -> Option<RateCap> {
    on.then_some(RateCap {
        rate_bps: 5_000_000,
        burst_bytes: Some(2_000),
    })
}

/// The policies the operations switch between: the default tiers (0), `classes5` (1),
/// one flat tier with aging off (2), and three tiers listed lowest first whose lowest
/// tier holds P0-P2, with a shorter aging timeout (3). Switching remaps priorities to
/// tiers, which re-files every listed stream, spends every lingering mark and moves
/// P2 in and out of the tier that aging bounds.
fn policy(which: u8, paced: bool) -> Arc<Policy> {
    let base = match which % 4 {
        1 => PolicySpec::classes5(),
        2 => PolicySpec {
            tiers: vec![TierSpec::new("All", &[0, 1, 2, 3, 4, 5, 6, 7], 100)],
            ..PolicySpec::default()
        },
        3 => PolicySpec {
            tiers: vec![
                TierSpec::new("Low", &[0, 1, 2], 15),
                TierSpec::new("Medium", &[3, 4, 5], 60),
                TierSpec::new("High", &[6, 7], 25),
            ],
            ..PolicySpec::default()
        },
        _ => PolicySpec::default(),
    };
    let aging = match which % 4 {
        2 => None,
        3 => Some(1_000_000),
        _ => Some(3_000_000),
    };
    let spec = PolicySpec {
        max_queue_depth: 6,
        critical_strikes: 2,
        max_packet_bytes: 1500,
        quantum_bytes: 1500,
        aging_timeout_ns: aging,
        link: paced.then_some(LinkRate {
            rate_bps: RATE,
            burst_bytes: BURST,
        }),
        ..base
    };
    Arc::new(spec.build().unwrap())
}

fn run(ops: Vec<Op>, paced: bool) -> Result<(), TestCaseError> {
    let config = SchedulerConfig {
        max_streams: 6,
        max_packets: 24,
        event_capacity: 16,
    };
    let mut b = Book {
        policy: policy(0, paced),
        ..Book::default()
    };
    let mut s: Scheduler<u64> = Scheduler::new(config, b.policy.clone()).unwrap();
    let mut ids: Vec<StreamId> = Vec::new();
    let (mut now, mut seq) = (0u64, 0u64);
    let pick = |ids: &Vec<StreamId>, i: usize| ids.get(i % ids.len().max(1)).copied();
    for op in ops {
        match op {
            Op::Open {
                prio,
                weight,
                capped,
            } => {
                if let Ok(id) = s.open(StreamConfig {
                    priority: Priority::ALL[usize::from(prio)],
                    weight,
                    cap: cap(capped),
                }) {
                    ids.push(id);
                }
            }
            Op::Enqueue { stream, len } => {
                if let Some(id) = pick(&ids, stream) {
                    offer(&mut s, &mut b, now, id, &mut seq, len);
                }
            }
            Op::Burst { stream, n } => {
                if let Some(id) = pick(&ids, stream) {
                    for _ in 0..n {
                        offer(&mut s, &mut b, now, id, &mut seq, 700);
                    }
                }
            }
            Op::Dequeue { n } => {
                for _ in 0..n {
                    if take(&mut s, &mut b, now)?.is_some() {
                        break;
                    }
                }
            }
            Op::DequeueBatch { n } => {
                let mut out = Vec::new();
                let end = s.dequeue_batch(now, usize::from(n), &mut out);
                prop_assert!(out.len() <= usize::from(n));
                if let BatchEnd::Wait { until_ns } = end {
                    prop_assert!(until_ns > now);
                }
                for d in out {
                    book(&mut b, now, &d)?;
                }
            }
            Op::Update {
                stream,
                prio,
                capped,
            } => {
                if let Some(id) = pick(&ids, stream) {
                    let _ = s.update(
                        id,
                        StreamConfig {
                            priority: Priority::ALL[usize::from(prio)],
                            weight: None,
                            cap: cap(capped),
                        },
                    );
                }
            }
            Op::Close { stream } => {
                if let Some(id) = pick(&ids, stream)
                    && let Ok(fin) = s.close(id)
                {
                    prop_assert!(fin.is_conserved(), "{fin:?}");
                }
            }
            Op::Reopen { stream } => {
                if let Some(id) = pick(&ids, stream)
                    && let Ok(new) = s.reopen(id)
                {
                    ids.push(new);
                }
            }
            Op::Advance { ns } | Op::Jump { ns } => now += ns,
            Op::SetPolicy { which } => {
                b.policy = policy(which, paced);
                s.set_policy(now, b.policy.clone());
            }
        }
        settle(&mut s, &mut b, &ids)?;
    }
    // Liveness: with time moving on to whenever the scheduler asks, everything still
    // queued leaves, sent or dropped with a reason. A stream left off the service
    // lists with packets (a lost link, a lingering mark mistaken for a listing) would
    // keep its packets here for ever.
    for _ in 0..10_000 {
        match take(&mut s, &mut b, now)? {
            None => {}
            Some(Some(until)) => now = until,
            Some(None) => break,
        }
        settle(&mut s, &mut b, &ids)?;
    }
    // The last call may have dropped a head (expired or AQM) before it found nothing.
    settle(&mut s, &mut b, &ids)?;
    prop_assert!(
        b.outstanding.is_empty(),
        "{} packets stranded: {:?}",
        b.outstanding.len(),
        s.shard_stats()
    );
    prop_assert_eq!(s.shard_stats().totals.queued, 0);
    if paced {
        check_pacing(&b.sends)?;
    }
    Ok(())
}

/// One `dequeue` at `now`, checked and booked: `None` after a packet, otherwise
/// `Some` of when to ask again (`None`: idle).
fn take(
    s: &mut Scheduler<u64>,
    b: &mut Book,
    now: u64,
) -> Result<Option<Option<u64>>, TestCaseError> {
    match s.dequeue(now) {
        Next::Packet(d) => {
            book(b, now, &d)?;
            Ok(None)
        }
        Next::Wait { until_ns } => {
            prop_assert!(until_ns > now);
            Ok(Some(Some(until_ns)))
        }
        Next::Idle => Ok(Some(None)),
    }
}

/// Books a packet taken at `now`: one we queued, not taken before, in stream order.
fn book(b: &mut Book, now: u64, d: &Dequeued<u64>) -> Result<(), TestCaseError> {
    prop_assert!(
        b.outstanding.remove(&d.packet),
        "unknown or duplicate packet"
    );
    let last = b.last_seq.insert(d.stream, d.packet);
    prop_assert!(last.is_none_or(|l| l < d.packet), "reordered");
    b.dequeued += 1;
    b.sends.push((now, d.len));
    // S9: with aging on, no packet of the lowest tier is sent after waiting longer than
    // the aging timeout + 1 s (past that it is dropped as expired), whatever the load
    // and however long the silences.
    let policy = &b.policy;
    let p = d.priority.get();
    if let Some(aging) = policy.spec().aging_timeout_ns
        && policy.tier_of(p) == policy.low_tier()
    {
        prop_assert!(
            d.sojourn_ns <= aging + 1_000_000_000,
            "P{p} sent after {} ns",
            d.sojourn_ns
        );
    }
    Ok(())
}

/// Books what the scheduler reclaimed, discards its events and checks S11.
fn settle(s: &mut Scheduler<u64>, b: &mut Book, ids: &[StreamId]) -> Result<(), TestCaseError> {
    while let Some(r) = s.pop_reclaimed() {
        prop_assert!(
            b.outstanding.remove(&r.packet),
            "reclaimed an unknown packet"
        );
        b.reclaimed += 1;
    }
    while s.pop_event().is_some() {}
    check(s, b, ids)
}

fn offer(s: &mut Scheduler<u64>, b: &mut Book, now: u64, id: StreamId, seq: &mut u64, len: u32) {
    *seq += 1;
    match s.enqueue(now, id, *seq, len) {
        Ok(()) => {
            b.accepted += 1;
            b.offered_bytes += u64::from(len);
            b.outstanding.insert(*seq);
        }
        Err(r) => {
            assert_eq!(r.packet, *seq, "the rejected packet comes back");
            match r.reason {
                Rejection::Dropped(_) => {
                    b.returned_dropped += 1;
                    b.offered_bytes += u64::from(len);
                }
                Rejection::Refused(_) => b.returned_refused += 1,
            }
        }
    }
}

fn check(s: &Scheduler<u64>, b: &Book, ids: &[StreamId]) -> Result<(), TestCaseError> {
    let shard = s.shard_stats();
    let t = shard.totals;
    prop_assert!(shard.is_conserved(), "{shard:?}");
    prop_assert_eq!(t.enqueued, b.accepted + b.returned_dropped);
    let offered: u64 = Priority::ALL.iter().map(|&p| s.offered_bytes(p)).sum();
    prop_assert_eq!(offered, b.offered_bytes);
    prop_assert_eq!(t.dequeued, b.dequeued);
    prop_assert_eq!(t.dropped_total(), b.returned_dropped + b.reclaimed);
    prop_assert_eq!(t.queued, b.outstanding.len() as u64);
    prop_assert_eq!(shard.refused.iter().sum::<u64>(), b.returned_refused);
    prop_assert_eq!(u64::from(shard.descriptors_in_use), t.queued);
    for p in Priority::ALL {
        prop_assert!(s.priority_stats(p).is_conserved(), "priority {p}");
    }
    for &id in ids {
        if let Some(st) = s.stream_stats(id) {
            prop_assert!(st.is_conserved(), "{id}: {st:?}");
        }
    }
    Ok(())
}

/// S5: over every interval between two sends, bytes <= rate * t + burst.
fn check_pacing(sends: &[(u64, u32)]) -> Result<(), TestCaseError> {
    for (i, &(t0, _)) in sends.iter().enumerate() {
        let mut bytes = 0u128;
        for &(t1, len) in &sends[i..] {
            bytes += u128::from(len);
            let allowed =
                u128::from(RATE) * u128::from(t1 - t0) / 8_000_000_000 + u128::from(BURST);
            prop_assert!(bytes <= allowed, "{bytes} bytes in {} ns", t1 - t0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn s11_s9_conservation_is_exact_and_no_lowest_tier_packet_outwaits_the_aging_bound(ops in prop::collection::vec(op(), 1..200)) {
        run(ops, false)?;
    }

    #[test]
    fn s5_pacing_bound_holds_after_any_operation_sequence(ops in prop::collection::vec(op(), 1..200)) {
        run(ops, true)?;
    }
}
