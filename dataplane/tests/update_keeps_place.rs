//! S3/S4: `update` must not move a backlogged stream ahead of the DRR round. The first
//! version withdrew and relinked it into the fresh list with a full quantum, so a
//! control plane re-applying an unchanged config before each decision gave one stream
//! 998 of 1000 packets.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
use qos_dataplane::sched::{Next, Policy, Scheduler, SchedulerConfig, StreamConfig};
use std::sync::Arc;

#[test]
fn s4_reapplying_an_unchanged_config_keeps_equal_streams_byte_fair() {
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let a = s.open(StreamConfig::with_priority(2)).unwrap();
    let b = s.open(StreamConfig::with_priority(2)).unwrap();
    for i in 0..2000 {
        s.enqueue(0, a, i, 1500).unwrap();
        s.enqueue(0, b, i, 1500).unwrap();
    }
    let (mut na, mut nb) = (0, 0);
    for _ in 0..1000 {
        // The control plane re-applies A's (unchanged) config before every decision.
        s.update(a, StreamConfig::with_priority(2)).unwrap();
        let Next::Packet(d) = s.dequeue(1) else {
            panic!("both streams are backlogged")
        };
        if d.stream == a { na += 1 } else { nb += 1 }
    }
    assert!(
        (na as i64 - nb as i64).abs() < 50,
        "equal-weight streams must be byte-fair: A {na}, B {nb}"
    );
}

/// A stream that empties lingers behind its tier's round as a mark (the round's push
/// count when it left). Moved to another tier while lingering, it must forget the mark:
/// that count means nothing in the new tier's round, whose own counts are far smaller
/// here, and read there it would put the stream's next packet at the tail of the new
/// round, behind every backlogged stream, instead of serving it as a returning sparse
/// stream (S4, and the issue's "a new stream's first packet is served like a returning
/// sparse one").
#[test]
fn s4_a_lingering_stream_moved_to_another_tier_returns_as_a_sparse_stream() {
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let take = |s: &mut Scheduler<u32>| match s.dequeue(1) {
        Next::Packet(d) => d.stream,
        other => panic!("backlogged, got {other:?}"),
    };
    // Medium: ten greedy P4 streams turn its round over many times.
    for _ in 0..10 {
        let m = s.open(StreamConfig::with_priority(4)).unwrap();
        for i in 0..1_000 {
            s.enqueue(1, m, i, 1_000).unwrap();
        }
    }
    for _ in 0..3_000 {
        take(&mut s);
    }
    // High: three greedy P6 streams, in their round for a few turns only.
    let high: Vec<_> = (0..3)
        .map(|_| {
            let h = s.open(StreamConfig::with_priority(6)).unwrap();
            for i in 0..1_000 {
                s.enqueue(1, h, i, 1_000).unwrap();
            }
            h
        })
        .collect();
    for _ in 0..40 {
        take(&mut s);
    }
    // A sparse P4 stream sends one packet and empties: it lingers in Medium's round.
    let sparse = s.open(StreamConfig::with_priority(4)).unwrap();
    s.enqueue(1, sparse, 0, 200).unwrap();
    while take(&mut s) != sparse {}
    // Moved to P6 while lingering; its next packet comes before High's round.
    s.update(sparse, StreamConfig::with_priority(6)).unwrap();
    s.enqueue(1, sparse, 1, 200).unwrap();
    let mut high_before = 0;
    loop {
        let d = take(&mut s);
        if d == sparse {
            break;
        }
        high_before += u32::from(high.contains(&d));
    }
    assert_eq!(
        high_before, 0,
        "a returning sparse stream is served at its tier's next turn, not behind its round"
    );
}
