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
