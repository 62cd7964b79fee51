//! S13: after warm-up, enqueue and dequeue never touch the heap, capped and throttled
//! streams included. A counting global allocator (per thread) watches the hot loop.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod counting_alloc;

use std::sync::Arc;

use counting_alloc::{Counting, allocations};
use qos_dataplane::sched::{
    LinkRate, Next, PolicySpec, Priority, RateCap, Scheduler, SchedulerConfig, StreamConfig,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn s13_no_heap_allocation_on_the_hot_path_after_warm_up() {
    let policy = PolicySpec {
        link: Some(LinkRate {
            rate_bps: 1_000_000_000,
            burst_bytes: 64_000,
        }),
        max_queue_depth: 64,
        ..PolicySpec::default()
    };
    let first = Arc::new(policy.clone().build().unwrap());
    let config = SchedulerConfig {
        max_streams: 512,
        max_packets: 1 << 15,
        event_capacity: 256,
    };
    let mut s: Scheduler<u64> = Scheduler::new(config, first).unwrap();
    let mut ids = Vec::new();
    for i in 0..400u32 {
        let cap = (i % 4 == 0).then_some(RateCap {
            rate_bps: 2_000_000,
            burst_bytes: Some(9_216),
        });
        ids.push(
            s.open(StreamConfig {
                priority: Priority::ALL[(i % 8) as usize],
                weight: None,
                cap,
            })
            .unwrap(),
        );
    }
    // Two policies prebuilt by the "control plane"; the worker adopts them by `Arc`
    // at batch boundaries (T3), which must not allocate either.
    let policies = [
        Arc::new(policy.clone().build().unwrap()),
        Arc::new(
            PolicySpec {
                version: 2,
                ..policy
            }
            .build()
            .unwrap(),
        ),
    ];
    let before = allocations();
    let (mut now, mut sent, mut waits) = (0u64, 0u64, 0u64);
    for round in 0..2_000u64 {
        for (k, &id) in ids.iter().enumerate().skip((round % 7) as usize).step_by(7) {
            let _ = s.enqueue(now, id, round, 200 + (k as u32 * 97) % 1300);
        }
        for _ in 0..64 {
            match s.dequeue(now) {
                Next::Packet(_) => sent += 1,
                Next::Wait { .. } => {
                    waits += 1;
                    break;
                }
                Next::Idle => break,
            }
        }
        while s.pop_event().is_some() {}
        if round % 100 == 0 {
            s.set_policy(0, policies[(round / 100 % 2) as usize].clone());
        }
        now += 20_000;
    }
    let during = allocations() - before;
    assert!(
        sent > 5_000 && waits > 0,
        "the loop exercised pacing and caps ({sent}, {waits})"
    );
    assert_eq!(during, 0, "heap allocations on the hot path");
}
