//! S9 starvation guard, the bound: no packet of the lowest tier waits longer than the
//! aging timeout + 1 s under any load (a packet older than that may be dropped instead
//! of sent, and every such drop is counted: S11), and promotion never gives a stream
//! less than its own tier would.
//!
//! Each scenario runs on the deterministic simulator (10 Mbit/s link, mostly 1500-byte
//! packets), then stops the lowest tier's sources and runs on for the bound plus a
//! second: by then every lowest-tier packet offered has been served within the bound
//! (checked on every dequeued packet) or dropped and counted, so nothing of that tier is
//! left queued. Conservation is checked against the harness's own bookkeeping.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{Policy, StreamConfig};
use sim::{Offer, Rng, SEC, Sim, aging_timeout_ns, oracle};

const LINK: u64 = 10_000_000;
/// How much longer than the aging timeout a lowest-tier packet may wait (S9).
const GRACE_NS: u64 = SEC;

/// `n` greedy streams at `priority` (1500 B, two packets kept queued each).
fn greedy(sim: &mut Sim, priority: u8, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            sim.add(
                StreamConfig::with_priority(priority),
                1500,
                Offer::Saturate { queued: 2 },
            )
        })
        .collect()
}

/// A constant-rate stream offering `fraction` of the link.
fn cbr(sim: &mut Sim, priority: u8, len: u32, fraction: f64) -> usize {
    let interval = (f64::from(len) * 8.0 * SEC as f64 / (fraction * LINK as f64)).round() as u64;
    sim.rate_every(priority, len, interval, 0)
}

/// Throughput of source `src` in `[from, to)` as a fraction of the link.
fn link_fraction(sim: &Sim, src: usize, from: u64, to: u64) -> f64 {
    let bytes = sim.source_bytes(from, to)[src];
    bytes as f64 * 8.0 / (LINK as f64 * (to - from) as f64 / SEC as f64)
}

/// What the S9 bound check measured, and what broke it.
struct Bound {
    worst_ns: u64,
    served: usize,
    failures: Vec<String>,
}

/// Runs `sim` for `duration_ns`, then silences the lowest tier's sources and drains for
/// the bound plus a second, and checks S9's bound (failures are returned, so the caller
/// can report its other measurements too) and S11 (asserted) on the whole run.
fn run_and_check_bound(sim: &mut Sim, policy: &Policy, duration_ns: u64, name: &str) -> Bound {
    let bound = aging_timeout_ns(policy).saturating_add(GRACE_NS);
    assert!(bound < u64::MAX, "aging is on in these policies");
    let low = policy.low_tier();
    sim.run_events_for(duration_ns);
    let low_sources: Vec<usize> = (0..sim.sources.len())
        .filter(|&i| policy.tier_of(sim.sources[i].priority) == low)
        .collect();
    for &i in &low_sources {
        sim.sources[i].offer = Offer::Off;
    }
    sim.run_events_for(bound + SEC);
    let low_sent: Vec<u64> = sim
        .sent
        .iter()
        .filter(|s| policy.tier_of(s.priority) == low)
        .map(|s| s.sojourn_ns)
        .collect();
    let worst_ns = low_sent.iter().copied().max().unwrap_or(0);
    let over = low_sent.iter().filter(|&&s| s > bound).count();
    let left_queued: u64 = low_sources
        .iter()
        .map(|&i| {
            sim.sched
                .stream_stats(sim.sources[i].stream)
                .unwrap()
                .queued
        })
        .sum();
    let shard = sim.sched.shard_stats();
    eprintln!(
        "{name}: {} lowest-tier packets served, worst sojourn {:.3} s (bound {:.1} s), {over} over the bound; \
         {left_queued} still queued {:.1} s after its sources stopped; drops by reason {:?}, {} skipped at full queues",
        low_sent.len(),
        worst_ns as f64 / 1e9,
        bound as f64 / 1e9,
        (bound + SEC) as f64 / 1e9,
        shard.totals.dropped,
        sim.skipped_at_source,
    );
    for src in &sim.sources {
        let stats = sim.sched.stream_stats(src.stream).unwrap();
        assert!(stats.is_conserved(), "{stats:?}");
    }
    sim.assert_conserved();
    let mut failures = Vec::new();
    if over > 0 {
        failures.push(format!(
            "{name}: {over} served lowest-tier packets waited longer than the aging timeout + 1 s ({:.1} s); worst {:.3} s",
            bound as f64 / 1e9,
            worst_ns as f64 / 1e9
        ));
    }
    if left_queued > 0 {
        failures.push(format!(
            "{name}: {left_queued} lowest-tier packets still queued {:.1} s after their sources stopped (neither served nor dropped within the bound)",
            (bound + SEC) as f64 / 1e9
        ));
    }
    Bound {
        worst_ns,
        served: low_sent.len(),
        failures,
    }
}

#[test]
fn s9_served_lowest_tier_packets_never_wait_longer_than_timeout_plus_1s_under_4x_overload() {
    // Default policy, High and Medium saturated: Low's share is 15% of the link; three Low
    // streams offer 60%. Their queues grow without bound unless aging intervenes.
    let policy = Policy::default();
    let mut sim = Sim::new(policy.clone(), LINK);
    sim.heed_backpressure = true;
    greedy(&mut sim, 7, 1);
    greedy(&mut sim, 4, 1);
    cbr(&mut sim, 0, 1500, 0.20);
    cbr(&mut sim, 1, 1000, 0.20);
    cbr(&mut sim, 0, 576, 0.20);
    let bound = run_and_check_bound(&mut sim, &policy, 40 * SEC, "Low at 4x its share");
    assert!(bound.served > 0);
    assert!(bound.failures.is_empty(), "{}", bound.failures.join("\n"));
}

/// (ii): classes5, one P0 stream offering 10% of the link against 1000 greedy P4
/// streams; with `all_tiers` every other tier is saturated too, so LogsMetrics gets
/// exactly its 5% and the P0 stream is overloaded 2x and ages.
fn p0_against_1000_greedy_p4(all_tiers: bool) -> (f64, f64, Bound) {
    let policy = Policy::classes5();
    let mut sim = Sim::new(policy.clone(), LINK);
    sim.heed_backpressure = true;
    greedy(&mut sim, 4, 1000);
    let mut offered = vec![(4u8, 2.0 * LINK as f64); 1000];
    if all_tiers {
        for p in [7, 6, 2] {
            greedy(&mut sim, p, 1);
            offered.push((p, 2.0 * LINK as f64));
        }
    }
    let p0 = cbr(&mut sim, 0, 1500, 0.10);
    offered.push((0, 0.10 * LINK as f64));
    let want = oracle(&policy, LINK as f64, &offered)[offered.len() - 1] / LINK as f64;
    let name = format!(
        "classes5 P0 at 10% vs 1000 greedy P4{}",
        if all_tiers {
            " and every other tier"
        } else {
            ""
        }
    );
    let bound = run_and_check_bound(&mut sim, &policy, 60 * SEC, &name);
    let got = link_fraction(&sim, p0, 20 * SEC, 60 * SEC);
    (got, want, bound)
}

#[test]
fn s9_promotion_never_gives_a_classes5_p0_stream_less_than_its_tier_share_against_1000_greedy_p4() {
    let policy = Policy::classes5();
    let tier_share = f64::from(policy.tiers()[policy.low_tier()].share_percent) / 100.0;
    let mut failures = Vec::new();
    for all_tiers in [false, true] {
        let (got, want, bound) = p0_against_1000_greedy_p4(all_tiers);
        failures.extend(bound.failures);
        eprintln!(
            "  P0 got {:.3}% of the link over the last 40 s (oracle {:.3}%, floor {:.3}% = its tier's {:.0}% - 2% relative)",
            100.0 * got,
            100.0 * want,
            100.0 * tier_share * 0.98,
            100.0 * tier_share
        );
        if got < tier_share * 0.98 {
            failures.push(format!(
                "other tiers saturated: {all_tiers}: P0 got {:.3}% of the link, below its tier's {:.0}% share",
                100.0 * got,
                100.0 * tier_share
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (iii): default policy, four P0 streams offering 5% of the link each (20%, more than
/// Low's 15%) against 1000 greedy P4 streams (and, with `high`, a greedy P7 stream, so
/// Low gets exactly its 15%).
fn four_low_against_1000_greedy_p4(high: bool) -> Vec<String> {
    let policy = Policy::default();
    let tier_share = f64::from(policy.tiers()[policy.low_tier()].share_percent) / 100.0;
    let mut sim = Sim::new(policy.clone(), LINK);
    sim.heed_backpressure = true;
    greedy(&mut sim, 4, 1000);
    if high {
        greedy(&mut sim, 7, 1);
    }
    let low: Vec<usize> = [1500, 1500, 1000, 576]
        .iter()
        .map(|&len| cbr(&mut sim, 0, len, 0.05))
        .collect();
    let name = format!(
        "4 P0 at 5% vs 1000 greedy P4{}",
        if high { " and a greedy P7" } else { "" }
    );
    let mut failures = run_and_check_bound(&mut sim, &policy, 60 * SEC, &name).failures;
    let floor = tier_share / 4.0 * 0.98;
    for &i in &low {
        let got = link_fraction(&sim, i, 20 * SEC, 60 * SEC);
        eprintln!(
            "  P0 stream {i} ({} B): {:.3}% of the link over the last 40 s (floor {:.3}%)",
            sim.sources[i].len,
            100.0 * got,
            100.0 * floor
        );
        if got < floor {
            failures.push(format!(
                "{name}: stream {i} got {:.3}% of the link, below 15%/4 - 2% relative = {:.3}%",
                100.0 * got,
                100.0 * floor
            ));
        }
    }
    failures
}

#[test]
fn s9_four_overloaded_low_streams_against_1000_greedy_p4_keep_the_bound_and_a_quarter_of_low_each()
{
    let mut failures = four_low_against_1000_greedy_p4(false);
    failures.extend(four_low_against_1000_greedy_p4(true));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (iv): 2000 Low streams (P0 and P1, 200-1500 B, Poisson) offering `load` of the link
/// in all, under Low's share, against greedy Medium (and, with `high`, greedy High).
fn many_low_streams(load: f64, high: bool) -> Bound {
    let policy = Policy::default();
    let mut sim = Sim::new(policy.clone(), LINK);
    sim.heed_backpressure = true;
    greedy(&mut sim, 4, 1);
    greedy(&mut sim, 2, 1);
    if high {
        greedy(&mut sim, 6, 1);
    }
    let mut rng = Rng::new(0x5e9);
    let n = 2000;
    for _ in 0..n {
        let prio = rng.below(2) as u8;
        let len = rng.range(200, 1500) as u32;
        sim.poisson(prio, len, load * LINK as f64 / n as f64, rng.next_u64());
    }
    let name = format!(
        "2000 Low streams offering {:.0}% vs greedy Medium{}",
        100.0 * load,
        if high { " and High" } else { "" }
    );
    run_and_check_bound(&mut sim, &policy, 40 * SEC, &name)
}

#[test]
fn s9_two_thousand_modest_low_streams_under_their_share_never_wait_past_the_bound() {
    let a = many_low_streams(0.12, false);
    let b = many_low_streams(0.14, true);
    eprintln!(
        "  worst sojourns: {:.3} s and {:.3} s",
        a.worst_ns as f64 / 1e9,
        b.worst_ns as f64 / 1e9
    );
    assert!(a.served > 0 && b.served > 0);
    let failures = [a.failures, b.failures].concat();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
