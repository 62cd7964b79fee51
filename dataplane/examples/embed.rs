//! Embedding the dataplane as a transport's packet-scheduling stage.
//!
//! A transport-like producer thread opens 16 streams (two per priority) and offers
//! twice the link rate; two pinned workers schedule them onto a 200 Mbit/s link shared
//! between them (T6); each worker's egress stands in for a socket: it counts and
//! timestamps what it sends. At the end the example prints the tier shares of the
//! bytes sent and per-priority sojourn percentiles from the histogram exchange.
//!
//! Run: `cargo run --release -p qos-dataplane --example embed [seconds]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use qos_dataplane::runtime::{Clock, Dataplane, Egress, EnqueueError, Outbox, StopMode};
use qos_dataplane::sched::{LinkRate, Policy, PolicySpec, StreamConfig, new_sojourn_histogram};

const LINK_BPS: u64 = 200_000_000;
const PACKET: u32 = 1_200;

/// Stands in for a UDP socket: counts bytes per tier and remembers the last send time.
struct CountingEgress {
    policy: Arc<Policy>,
    tier_bytes: Arc<Mutex<Vec<u64>>>,
    last_send_ns: Arc<AtomicU64>,
}

impl Egress<u64> for CountingEgress {
    fn send(&mut self, now_ns: u64, out: &mut Outbox<'_, u64>) {
        let mut bytes = self.tier_bytes.lock().expect("egress counters");
        while let Some(d) = out.pop() {
            bytes[self.policy.tier_of(d.priority.get())] += u64::from(d.len);
        }
        self.last_send_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let policy = Arc::new(
        PolicySpec {
            link: Some(LinkRate {
                rate_bps: LINK_BPS,
                burst_bytes: 64 * 1024,
            }),
            ..PolicySpec::default()
        }
        .build()?,
    );
    let tier_bytes = Arc::new(Mutex::new(vec![0u64; policy.tiers().len()]));
    let last_send = Arc::new(AtomicU64::new(0));
    let (p, b, l) = (policy.clone(), tier_bytes.clone(), last_send.clone());
    let (mut dataplane, mut producers) = Dataplane::<u64>::builder()
        .workers(2)
        .policy(policy.clone())
        .build(move |_worker| CountingEgress {
            policy: p.clone(),
            tier_bytes: b.clone(),
            last_send_ns: l.clone(),
        })?;
    println!("pinning: {:?}", dataplane.pinning());

    // The transport thread: 16 streams, offered 2x the link, paced in 1 ms steps.
    let mut tx = producers.pop().ok_or("one producer")?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let transport = thread::Builder::new()
        .name("transport".into())
        .spawn(move || {
            let streams: Vec<_> = (0..16u64)
                .map(|i| tx.open(i, StreamConfig::with_priority((i / 2) as u8)))
                .collect::<Result<_, _>>()
                .expect("open");
            let per_stream_pps = 2 * LINK_BPS / (8 * u64::from(PACKET)) / streams.len() as u64;
            let clock = Clock::start();
            let (mut sent, mut refused) = (0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                let due = clock.now_ns() * per_stream_pps / 1_000_000_000;
                while sent < due {
                    for h in &streams {
                        match tx.enqueue_quiet(*h, sent, PACKET) {
                            Ok(()) => {}
                            Err(EnqueueError::Full(_)) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    sent += 1;
                }
                tx.flush();
                thread::sleep(Duration::from_millis(1));
            }
            refused
        })?;

    // The control thread: gather sojourn histograms once a second.
    let mut sojourn: Vec<_> = (0..8).map(|_| new_sojourn_histogram()).collect();
    for _ in 0..secs {
        thread::sleep(Duration::from_secs(1));
        for set in dataplane
            .take_histograms(Duration::from_millis(100))
            .into_iter()
            .flatten()
        {
            for (p, h) in set.sojourn.iter().enumerate() {
                sojourn[p].add(h)?;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let refused = transport.join().map_err(|_| "transport thread panicked")?;
    let report = dataplane.shutdown(StopMode::Discard)?;

    let bytes = tier_bytes.lock().map_err(|_| "egress counters")?;
    let total: u64 = bytes.iter().sum();
    println!(
        "\nlink {} Mbit/s, {} s, {} workers",
        LINK_BPS / 1_000_000,
        secs,
        report.workers.len()
    );
    for (t, tier) in policy.tiers().iter().enumerate() {
        println!(
            "tier {:<7} share {:>3}%  got {:>5.1}%",
            tier.name,
            tier.share_percent,
            100.0 * bytes[t] as f64 / total.max(1) as f64
        );
    }
    println!(
        "sent {:.1} Mbit/s (last send at {:.3} s)",
        total as f64 * 8.0 / secs as f64 / 1e6,
        last_send.load(Ordering::Relaxed) as f64 / 1e9
    );
    println!("\npriority  packets    p50 ms    p99 ms  p99.9 ms");
    for (p, h) in sojourn.iter().enumerate().rev() {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        println!(
            "P{p}      {:>8}  {:>8.3}  {:>8.3}  {:>8.3}",
            h.len(),
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
    }
    println!(
        "\nrefused by full rings (handed back): {refused}; taken {} sent {} discarded {} (AQM, tail drop, shutdown); conserved: {}",
        report.taken(),
        report.sent(),
        report.discarded(),
        report.is_conserved()
    );
    Ok(())
}
