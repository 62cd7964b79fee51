//! Simulates the reference policy under overload on a virtual clock and prints the tier
//! shares against the configured ones, per-priority sojourn percentiles against the
//! latency budgets, and the drops by reason: queue-delay control (S14) keeps every
//! budgeted priority within its budget by dropping the excess of streams above their
//! share (`aqm`) instead of queueing it for seconds.
//!
//! Run: `cargo run --release -p qos-dataplane --example overload`
//!
//! A 100 Mbit/s fake link; one stream per priority with 1200-byte packets: P7 offers
//! 12 Mbit/s (real-time, below its fair share), P6 20 Mbit/s, every other priority
//! 30 Mbit/s: 2.12x the link in all, every tier over its share. Sources heed backpressure: they skip
//! a packet while their queue is full. Ten virtual seconds, deterministic.

use std::sync::Arc;

use qos_dataplane::sched::{
    DropReason, Next, Policy, Priority, Scheduler, SchedulerConfig, StreamConfig,
};

const LINK_BPS: u64 = 100_000_000;
/// Offered rate per priority 0..=7, bits/s.
const OFFER_BPS: [u64; 8] = [
    30_000_000, 30_000_000, 30_000_000, 30_000_000, 30_000_000, 30_000_000, 20_000_000, 12_000_000,
];
const LEN: u32 = 1_200;
const SEC: u64 = 1_000_000_000;
const DURATION: u64 = 10 * SEC;

fn main() {
    let policy = Arc::new(Policy::default());
    let config = SchedulerConfig {
        max_streams: 64,
        max_packets: 1 << 17,
        event_capacity: 1 << 12,
    };
    let mut sched: Scheduler<u64> = Scheduler::new(config, policy.clone()).expect("valid config");
    let ids: Vec<_> = (0..8u8)
        .map(|p| sched.open(StreamConfig::with_priority(p)).expect("open"))
        .collect();
    let interval: Vec<u64> = OFFER_BPS
        .iter()
        .map(|r| u64::from(LEN) * 8 * SEC / r)
        .collect();
    let ns_per_byte = 8 * SEC / LINK_BPS;
    let depth = u64::from(policy.spec().max_queue_depth);
    let mut next_arrival = [0u64; 8];
    let (mut now, mut link_free, mut seq, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    while now < DURATION {
        for (p, &id) in ids.iter().enumerate() {
            while next_arrival[p] <= now {
                // Sources heed backpressure: skip while the queue is full.
                let full = sched.stream_stats(id).is_some_and(|s| s.queued >= depth);
                if full || sched.enqueue(next_arrival[p], id, seq, LEN).is_err() {
                    skipped += 1;
                }
                seq += 1;
                next_arrival[p] += interval[p];
            }
        }
        let arrival = *next_arrival.iter().min().expect("eight sources");
        if link_free > now {
            now = link_free.min(arrival);
            continue;
        }
        match sched.dequeue(now) {
            Next::Packet(d) => link_free = now + u64::from(d.len) * ns_per_byte,
            Next::Wait { until_ns } => now = until_ns.min(arrival),
            Next::Idle => now = arrival,
        }
        while sched.pop_event().is_some() {}
    }
    print_report(&sched, &policy, skipped);
}

fn print_report(sched: &Scheduler<u64>, policy: &Policy, skipped: u64) {
    println!(
        "Reference policy, 100 Mbit/s link, 212 Mbit/s offered (P7 12, P6 20, others 30), 10 s virtual\n"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>12}",
        "tier", "configured", "measured", "Mbit/s"
    );
    let total: u64 = (0..policy.tiers().len())
        .map(|t| sched.tier_stats(t).map_or(0, |s| s.served.bytes))
        .sum();
    for (t, tier) in policy.tiers().iter().enumerate() {
        let bytes = sched.tier_stats(t).map_or(0, |s| s.served.bytes);
        println!(
            "{:<8} {:>9}% {:>9.2}% {:>12.2}",
            tier.name,
            tier.share_percent,
            100.0 * bytes as f64 / total as f64,
            bytes as f64 * 8.0 / (DURATION as f64 / SEC as f64) / 1e6
        );
    }
    println!(
        "\n{:<4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "prio", "budget", "p50", "p95", "p99", "max", "sent", "aqm drop"
    );
    for p in (0..8u8).rev() {
        let h = sched.sojourn_histogram(Priority::ALL[usize::from(p)]);
        let ms = |v: u64| format!("{:.2} ms", v as f64 / 1e6);
        let budget = policy.spec().latency_budget_ns[usize::from(p)].map_or("best eff.".into(), ms);
        let stats = sched.priority_stats(Priority::ALL[usize::from(p)]);
        println!(
            "P{:<3} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            p,
            budget,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.95)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            stats.dequeued,
            stats.dropped[DropReason::Aqm as usize],
        );
    }
    let shard = sched.shard_stats();
    let t = shard.totals;
    let by_reason: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| format!("{} {}", r.as_str(), t.dropped[*r as usize]))
        .collect();
    println!("\ndrops by reason: {}", by_reason.join(", "));
    println!(
        "\nS11: enqueued {} = dequeued {} + dropped {} + queued {} ({}); skipped at source {}",
        t.enqueued,
        t.dequeued,
        t.dropped_total(),
        t.queued,
        if shard.is_conserved() {
            "conserved"
        } else {
            "NOT CONSERVED"
        },
        skipped
    );
}
