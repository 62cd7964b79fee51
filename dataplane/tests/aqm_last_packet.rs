//! Review: the AQM hard limit drops the last (only) packet of a queue, though
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! DECISIONS.md says "(never the last packet of a queue)" and S14 says a stream within
//! its share sees no AQM drop.
use qos_dataplane::sched::{Next, Policy, Priority, Scheduler, SchedulerConfig, StreamConfig};
use std::sync::Arc;

fn sched() -> Scheduler<u32> {
    Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap()
}

#[test]
fn hard_limit_drops_the_only_packet_of_a_low_weight_stream() {
    let mut s = sched();
    // P2 (Medium, budget 100 ms) with a weight override of 1: quantum 1514 >> 2 = 378 B.
    let id = s
        .open(StreamConfig {
            priority: Priority::new(2).unwrap(),
            weight: Some(1),
            cap: None,
        })
        .unwrap();
    // One 4000-byte packet (< max_packet_bytes 9216): 1 x 4000 > 8 x 378 looks like a flood.
    s.enqueue(0, id, 1, 4000).unwrap();
    // Served 150 ms later (e.g. the link was busy): older than the 100 ms interval.
    let out = s.dequeue(150_000_000);
    let st = s.stream_stats(id).unwrap();
    println!(
        "dequeue -> {:?}; stats {:?}",
        matches!(out, Next::Packet(_)),
        st
    );
    let r = s.pop_reclaimed();
    println!("reclaimed: {:?}", r.map(|r| r.reason));
    assert_eq!(
        st.dropped_aqm, 0,
        "the only packet of a one-packet stream was AQM-dropped"
    );
}

#[test]
fn hard_limit_drops_the_last_jumbo_packet_at_default_weight() {
    // Default weights: a P2 stream sending 9216-byte frames (max_packet_bytes 9216,
    // quantum 1514) counts a saturated DRR turn for every packet served while it
    // holds more; after 17 such turns it is "over share", and once the link stalls
    // past the 100 ms interval even its last packet is AQM-dropped.
    let mut s = sched();
    let id = s.open(StreamConfig::with_priority(2)).unwrap();
    for i in 0..20 {
        s.enqueue(0, id, i, 9216).unwrap();
    }
    let mut now = 0;
    let mut dropped_ids = Vec::new();
    for _ in 0..17 {
        assert!(matches!(s.dequeue(now), Next::Packet(_)));
        now += 1_000_000;
    }
    // Two more packets are sent later, then the last packet waits 150 ms.
    now = 60_000_000;
    assert!(matches!(s.dequeue(now), Next::Packet(_)));
    assert!(matches!(s.dequeue(now), Next::Packet(_)));
    let out = s.dequeue(150_000_000);
    while let Some(r) = s.pop_reclaimed() {
        dropped_ids.push(r.packet);
    }
    let st = s.stream_stats(id).unwrap();
    println!(
        "last dequeue is a packet: {}; AQM-dropped ids {dropped_ids:?}; {st:?}",
        matches!(out, Next::Packet(_))
    );
    assert!(
        !dropped_ids.contains(&19),
        "the last packet of the queue was AQM-dropped"
    );
}
