//! STYLE 3 / S13 for the runtime: after warm-up, the worker thread allocates nothing
//! while packets flow through rings, scheduler and egress. The egress runs on the
//! worker thread, so it reads that thread's allocation count.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod counting_alloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use counting_alloc::{Counting, allocations};
use qos_dataplane::runtime::{Dataplane, Egress, EnqueueError, Outbox, Pinning, StopMode};
use qos_dataplane::sched::{LinkRate, PolicySpec, StreamConfig};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts packets and publishes the worker thread's allocation count at each call.
struct Probe {
    sent: Arc<AtomicU64>,
    worker_allocs: Arc<AtomicU64>,
}

impl Egress<u64> for Probe {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        let mut n = 0;
        while out.pop().is_some() {
            n += 1;
        }
        self.sent.fetch_add(n, Ordering::Release);
        self.worker_allocs.store(allocations(), Ordering::Release);
    }
}

#[test]
fn s13_worker_thread_allocates_nothing_per_packet_after_warm_up() {
    no_alloc_run(None);
}

#[test]
fn s13_no_allocation_with_link_sharing_either() {
    // A link fast enough not to hold the test back: link sharing runs every period.
    no_alloc_run(Some(LinkRate {
        rate_bps: 10_000_000_000,
        burst_bytes: 1 << 20,
    }));
}

fn no_alloc_run(link: Option<LinkRate>) {
    let sent = Arc::new(AtomicU64::new(0));
    let allocs = Arc::new(AtomicU64::new(0));
    let (s, a) = (sent.clone(), allocs.clone());
    let policy = PolicySpec {
        link,
        disconnect: false,
        ..PolicySpec::default()
    };
    let (dp, mut producers) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(Arc::new(policy.build().unwrap()))
        .build(move |_| Probe {
            sent: s.clone(),
            worker_allocs: a.clone(),
        })
        .unwrap();
    let mut tx = producers.pop().unwrap();
    let streams: Vec<_> = (0..64u64)
        .map(|i| {
            tx.open(i, StreamConfig::with_priority((i % 8) as u8))
                .unwrap()
        })
        .collect();
    let mut pushed = 0u64;
    let mut push = |n: u64, tx: &mut qos_dataplane::runtime::Producer<u64>| {
        for _ in 0..n {
            let h = streams[(pushed % 64) as usize];
            loop {
                match tx.enqueue(h, pushed, 700) {
                    Ok(()) => break,
                    Err(EnqueueError::Full(_)) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            pushed += 1;
        }
        pushed
    };
    // Sent or discarded (AQM may drop under the bursts): every packet taken care of.
    let wait = |target: u64| {
        for _ in 0..20_000 {
            let s = &dp.stats()[0];
            if s.sent + s.discarded >= target {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("egress stalled");
    };
    // Warm-up: every stream opened, every buffer at its working size.
    let warm = push(20_000, &mut tx);
    wait(warm);
    thread::sleep(Duration::from_millis(20));
    let before = allocs.load(Ordering::Acquire);
    let total = push(100_000, &mut tx);
    wait(total);
    let after = allocs.load(Ordering::Acquire);
    assert_eq!(
        after - before,
        0,
        "worker thread allocated while 100,000 packets flowed"
    );
    drop(tx);
    let report = dp.shutdown(StopMode::Drain).unwrap();
    assert_eq!(report.sent() + report.discarded(), total);
    assert_eq!(report.sent(), sent.load(Ordering::Acquire));
    assert!(report.is_conserved());
}
