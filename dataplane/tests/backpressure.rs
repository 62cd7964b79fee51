//! Bounded queues, backpressure signals and disconnection (S7, S8), refusals and the
//! reclaim path (S11: nothing is lost silently).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use qos_dataplane::sched::{
    DropReason, Event, Next, Policy, PolicySpec, Priority, RefuseReason, Rejection, Scheduler,
    SchedulerConfig, StreamConfig,
};

fn sched_with_depth(depth: u32) -> Scheduler<u32> {
    let policy = PolicySpec {
        max_queue_depth: depth,
        ..PolicySpec::default()
    };
    Scheduler::new(
        SchedulerConfig::default(),
        Arc::new(policy.build().unwrap()),
    )
    .unwrap()
}

fn events(s: &mut Scheduler<u32>) -> Vec<Event> {
    std::iter::from_fn(|| s.pop_event()).collect()
}

#[test]
fn s7_warning_fires_before_first_tail_drop_and_clears_at_the_watermark() {
    let mut s = sched_with_depth(100);
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    let mut first_drop = None;
    for i in 0..101u32 {
        if let Err(r) = s.enqueue(0, id, i, 100) {
            assert_eq!(r.reason, Rejection::Dropped(DropReason::QueueFull));
            assert_eq!(r.packet, i, "the dropped packet comes back");
            first_drop.get_or_insert(i);
        }
    }
    assert_eq!(
        first_drop,
        Some(100),
        "the 101st push is the first tail drop"
    );
    let ev = events(&mut s);
    assert_eq!(
        ev,
        vec![
            Event::BackpressureWarning {
                stream: id,
                depth: 90
            },
            Event::BackpressureCritical {
                stream: id,
                depth: 100,
                strike: 1
            },
        ],
        "exactly one WARNING, at 90%, before the CRITICAL of the first drop"
    );
    // Drain to 50%: one CLEARED, at depth 50 (and no second one below it).
    for _ in 0..51 {
        assert!(matches!(s.dequeue(1), Next::Packet(_)));
    }
    assert_eq!(
        events(&mut s),
        vec![Event::BackpressureCleared {
            stream: id,
            depth: 50
        }]
    );
    let st = s.stream_stats(id).unwrap();
    assert_eq!(
        (st.enqueued, st.dequeued, st.dropped_queue_full, st.queued),
        (101, 51, 1, 49)
    );
    assert!(st.is_conserved());
    assert_eq!(s.priority_stats(Priority::ALL[3]).warnings, 1);
    assert_eq!(s.priority_stats(Priority::ALL[3]).criticals, 1);
}

/// Found by a red-team review: a policy that lowered the depth below a stream's queue
/// made its next push a CRITICAL with no WARNING before it. Every episode now opens
/// with one WARNING, then CRITICALs, then one CLEARED at the new watermark.
#[test]
fn s7_a_depth_lowered_under_the_queue_warns_before_its_first_critical() {
    let mut s = sched_with_depth(100);
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..50u32 {
        s.enqueue(0, id, i, 100).unwrap();
    }
    assert_eq!(events(&mut s), vec![], "50 of 100: no episode");
    let lowered = PolicySpec {
        version: 2,
        max_queue_depth: 10,
        ..PolicySpec::default()
    };
    s.set_policy(0, Arc::new(lowered.build().unwrap()));
    for i in 50..52u32 {
        let r = s.enqueue(0, id, i, 100).unwrap_err();
        assert_eq!(r.reason, Rejection::Dropped(DropReason::QueueFull));
    }
    assert_eq!(
        events(&mut s),
        vec![
            Event::BackpressureWarning {
                stream: id,
                depth: 50
            },
            Event::BackpressureCritical {
                stream: id,
                depth: 50,
                strike: 1
            },
            Event::BackpressureCritical {
                stream: id,
                depth: 50,
                strike: 2
            },
        ],
        "one WARNING, then a CRITICAL per drop"
    );
    // Drain to the new clear mark (50% of 10): one CLEARED, at depth 5.
    for _ in 0..45 {
        assert!(matches!(s.dequeue(1), Next::Packet(_)));
    }
    assert_eq!(
        events(&mut s),
        vec![Event::BackpressureCleared {
            stream: id,
            depth: 5
        }]
    );
    let p3 = s.priority_stats(Priority::ALL[3]);
    assert_eq!((p3.warnings, p3.criticals), (1, 2));
    assert!(s.stream_stats(id).unwrap().is_conserved());
}

#[test]
fn s8_stream_ignoring_three_criticals_is_disconnected_and_its_queue_counted() {
    let mut s = sched_with_depth(10);
    let id = s.open(StreamConfig::with_priority(5)).unwrap();
    let other = s.open(StreamConfig::with_priority(5)).unwrap();
    s.enqueue(0, other, 999, 100).unwrap();
    for i in 0..10 {
        s.enqueue(0, id, i, 100).unwrap();
    }
    for strike in 1..=3u8 {
        let r = s.enqueue(0, id, 100 + u32::from(strike), 100).unwrap_err();
        assert_eq!(
            r.reason,
            Rejection::Dropped(DropReason::QueueFull),
            "strike {strike}"
        );
    }
    let r = s.enqueue(0, id, 200, 100).unwrap_err();
    assert_eq!(r.reason, Rejection::Dropped(DropReason::Disconnected));
    let ev = events(&mut s);
    assert_eq!(
        ev.last(),
        Some(&Event::Disconnected {
            stream: id,
            dropped: 11
        })
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::BackpressureCritical { .. }))
            .count(),
        3
    );

    // The queue was dropped, counted, and handed back for reuse.
    let reclaimed: Vec<_> = std::iter::from_fn(|| s.pop_reclaimed()).collect();
    assert_eq!(reclaimed.len(), 10);
    assert!(
        reclaimed
            .iter()
            .all(|r| r.stream == id && r.reason == DropReason::Disconnected)
    );
    assert_eq!(
        reclaimed.iter().map(|r| r.packet).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let st = s.stream_stats(id).unwrap();
    assert!(st.disconnected);
    assert_eq!(
        (
            st.enqueued,
            st.dropped_queue_full,
            st.dropped_disconnected,
            st.queued
        ),
        (14, 3, 11, 0)
    );
    assert!(st.is_conserved());
    assert_eq!(s.priority_stats(Priority::ALL[5]).disconnects, 1);

    // Further pushes fail clearly until reopened; the other stream is untouched.
    let r = s.enqueue(1, id, 300, 100).unwrap_err();
    assert_eq!(r.reason, Rejection::Refused(RefuseReason::Disconnected));
    match s.dequeue(2) {
        Next::Packet(d) => assert_eq!((d.stream, d.packet), (other, 999)),
        other => panic!("expected the other stream's packet, got {other:?}"),
    }
    let id2 = s.reopen(id).unwrap();
    assert_ne!(id2, id);
    s.enqueue(3, id2, 400, 100).unwrap();
    assert_eq!(s.stream_stats(id2).unwrap().enqueued, 1, "fresh counters");
    assert!(s.shard_stats().is_conserved());
}

#[test]
fn s8_a_stream_that_backs_off_is_not_disconnected() {
    let mut s = sched_with_depth(10);
    let id = s.open(StreamConfig::with_priority(5)).unwrap();
    for round in 0..5u32 {
        for i in 0..13 {
            let _ = s.enqueue(0, id, round * 100 + i, 100);
        }
        // Heeds the CRITICALs: lets the queue drain below the clear watermark.
        while s.stream_stats(id).unwrap().queued > 0 {
            assert!(matches!(s.dequeue(0), Next::Packet(_)));
        }
    }
    let st = s.stream_stats(id).unwrap();
    assert!(!st.disconnected);
    assert_eq!(
        st.dropped_queue_full, 15,
        "3 tail drops per episode, 5 episodes"
    );
}

#[test]
fn s11_refusals_hand_the_packet_back_and_are_counted_not_enqueued() {
    let config = SchedulerConfig {
        max_streams: 4,
        max_packets: 3,
        event_capacity: 8,
    };
    let mut s: Scheduler<u32> = Scheduler::new(config, Arc::new(Policy::default())).unwrap();
    let id = s.open(StreamConfig::with_priority(1)).unwrap();
    let refused = |r: Result<(), qos_dataplane::sched::Rejected<u32>>| match r {
        Err(r) => match r.reason {
            Rejection::Refused(why) => (r.packet, why),
            other => panic!("expected a refusal, got {other:?}"),
        },
        Ok(()) => panic!("expected a refusal"),
    };
    assert_eq!(
        refused(s.enqueue(0, id, 1, 0)),
        (1, RefuseReason::InvalidLength)
    );
    assert_eq!(
        refused(s.enqueue(0, id, 2, 70_000)),
        (2, RefuseReason::InvalidLength)
    );
    for i in 0..3 {
        s.enqueue(0, id, 10 + i, 100).unwrap();
    }
    assert_eq!(
        refused(s.enqueue(0, id, 3, 100)),
        (3, RefuseReason::PoolExhausted)
    );
    let closed = s.open(StreamConfig::with_priority(2)).unwrap();
    s.close(closed).unwrap();
    assert_eq!(
        refused(s.enqueue(0, closed, 4, 100)),
        (4, RefuseReason::Closed)
    );
    // The slot is reused under a new generation: the old handle is unknown, and its
    // packet must not land in the new stream.
    let reused = s.open(StreamConfig::with_priority(2)).unwrap();
    assert_eq!(reused.index(), closed.index());
    assert_eq!(
        refused(s.enqueue(0, closed, 5, 100)),
        (5, RefuseReason::UnknownStream)
    );
    let forged = qos_dataplane::sched::StreamId::from_raw(999);
    assert_eq!(
        refused(s.enqueue(0, forged, 6, 100)),
        (6, RefuseReason::UnknownStream)
    );
    assert_eq!(s.stream_stats(reused).unwrap().enqueued, 0);
    let shard = s.shard_stats();
    assert_eq!(shard.refused, [2, 1, 0, 2, 1]);
    assert_eq!(shard.totals.enqueued, 3);
    assert!(shard.is_conserved());
}

#[test]
fn s11_close_drops_the_queue_with_reason_closed_and_reclaims_it() {
    let mut s = sched_with_depth(100);
    let id = s.open(StreamConfig::with_priority(6)).unwrap();
    for i in 0..5 {
        s.enqueue(0, id, i, 500).unwrap();
    }
    assert!(matches!(s.dequeue(0), Next::Packet(_)));
    let fin = s.close(id).unwrap();
    assert_eq!(
        (fin.enqueued, fin.dequeued, fin.dropped_closed, fin.queued),
        (5, 1, 4, 0)
    );
    assert!(fin.is_conserved());
    let back: Vec<_> = std::iter::from_fn(|| s.pop_reclaimed())
        .map(|r| (r.packet, r.reason))
        .collect();
    assert_eq!(
        back,
        (1..5).map(|i| (i, DropReason::Closed)).collect::<Vec<_>>()
    );
    assert_eq!(
        s.priority_stats(Priority::ALL[6]).dropped[DropReason::Closed as usize],
        4
    );
    assert_eq!(s.shard_stats().descriptors_in_use, 0);
    assert_eq!(s.dequeue(1), Next::Idle);
}
