//! What a producer pays per packet, through the whole pipeline with the scheduler
//! bypassed: one producer (this thread) pushes 5,000,000 packets of 100 bytes on one
//! stream to one spinning worker whose egress counts them; the time until the egress
//! has them all, per packet.
//!
//! `cargo run --release -p qos-benches --example producer_cost -- single|burst`
//!
//! `single`: `Producer::enqueue` per packet (a burst of one: the stop handshake's fence
//! and the wake-up's fence every packet). `burst`: `enqueue_quiet`, with `flush` every
//! 32 packets (both fences once a burst). On a 2-core machine the figure is bimodal:
//! when the two threads do not get a core each, it is several times higher; take the
//! median of several runs (docs/BENCHMARKS.md).
#![allow(clippy::disallowed_methods)] // a timing harness reads the clock

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use qos_dataplane::runtime::{
    Dataplane, Egress, EnqueueError, IdleStrategy, Outbox, Pinning, RuntimeConfig, StopMode,
};
use qos_dataplane::sched::StreamConfig;

const PACKETS: u64 = 5_000_000;

/// Counts what it is offered, all of it sent.
struct Count(Arc<AtomicU64>);

impl Egress<u64> for Count {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        let mut n = 0;
        while out.pop().is_some() {
            n += 1;
        }
        // Release: the producer thread reads the count to stop the clock.
        self.0.fetch_add(n, Ordering::Release);
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "burst".into());
    let single = match mode.as_str() {
        "single" => true,
        "burst" => false,
        other => {
            eprintln!("mode: {other}, expected single or burst");
            std::process::exit(2);
        }
    };
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let config = RuntimeConfig {
        bypass_scheduler: true,
        idle: IdleStrategy::Spin,
        ..RuntimeConfig::default()
    };
    let Ok((dp, mut producers)) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .config(config)
        .build(move |_| Count(s.clone()))
    else {
        eprintln!("cannot build the dataplane");
        std::process::exit(1);
    };
    let Some(mut tx) = producers.pop() else {
        std::process::exit(1);
    };
    let Ok(h) = tx.open(1, StreamConfig::with_priority(3)) else {
        std::process::exit(1);
    };
    let start = Instant::now();
    let mut i = 0;
    while i < PACKETS {
        let pushed = if single {
            tx.enqueue(h, i, 100)
        } else {
            tx.enqueue_quiet(h, i, 100)
        };
        match pushed {
            Ok(()) => {
                i += 1;
                if !single && i % 32 == 0 {
                    tx.flush();
                }
            }
            Err(EnqueueError::Full(_)) => {
                tx.flush();
                std::hint::spin_loop();
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    tx.flush();
    // Acquire: partner of the egress's Release count.
    while sent.load(Ordering::Acquire) < PACKETS {
        std::hint::spin_loop();
    }
    let took = start.elapsed();
    println!(
        "{mode}: {:.2} ns a packet",
        took.as_nanos() as f64 / PACKETS as f64
    );
    drop(tx);
    let _ = dp.shutdown(StopMode::Drain);
}
