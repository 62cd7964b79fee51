//! Link pacing (S5) and per-stream rate caps (S6).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use qos_dataplane::sched::{LinkRate, Priority, RateCap, StreamConfig};
use sim::{MS, Offer, SEC, Sim, policy_with};

/// Largest `bytes - rate * t` over every interval `[a, b]` of the send log.
fn worst_excess(sent: &[sim::Sent], rate_bps: u64) -> i128 {
    let mut worst = i128::MIN;
    for (i, a) in sent.iter().enumerate() {
        let mut bytes = 0i128;
        for b in &sent[i..] {
            bytes += i128::from(b.len);
            let allowed = i128::from(rate_bps) * i128::from(b.at - a.at) / (8 * i128::from(SEC));
            worst = worst.max(bytes - allowed);
        }
    }
    worst
}

#[test]
fn s5_link_pacing_never_exceeds_rate_times_t_plus_burst() {
    let (rate, burst) = (10_000_000u64, 10_000u64);
    let policy = policy_with(|b| {
        b.link = Some(LinkRate {
            rate_bps: rate,
            burst_bytes: burst,
        })
    });
    // An infinitely fast fake link: only the scheduler's pacer limits the output.
    let mut sim = sim::Sim::new(policy, 0);
    for p in [0, 3, 5, 7] {
        sim.saturate(p, 300 + 250 * u32::from(p));
    }
    sim.run_for(200 * MS);
    let worst = worst_excess(&sim.sent, rate);
    assert!(
        worst <= i128::from(burst),
        "excess {worst} over rate*t exceeds burst {burst}"
    );
    assert!(
        worst > i128::from(burst) - 2_100,
        "the burst is used (excess {worst})"
    );
    // And the pacer is not simply slow: it delivers the rate.
    let bytes: u64 = sim.sent.iter().map(|s| u64::from(s.len)).sum();
    let expected = rate / 8 / 5 + burst; // 200 ms
    assert!(
        bytes as f64 >= expected as f64 * 0.98,
        "{bytes} bytes, expected ~{expected}"
    );
    sim.assert_conserved();
}

#[test]
fn s6_capped_stream_gets_its_cap_and_never_blocks_others() {
    let mut sim = Sim::default_policy(100_000_000);
    let cap = RateCap {
        rate_bps: 10_000_000,
        burst_bytes: None,
    };
    let capped = StreamConfig {
        priority: Priority::ALL[7],
        weight: None,
        cap: Some(cap),
    };
    let capped = sim.add(capped, 1000, Offer::Saturate { queued: 64 });
    let bulk = sim.saturate(2, 1000);
    sim.run_for(SEC);
    // Measure after the initial burst allowance (2 x 10 ms at 10 Mbit/s = 25 kB).
    let bytes = sim.source_bytes(100 * MS, SEC);
    let secs = 0.9;
    let capped_bps = bytes[capped] as f64 * 8.0 / secs;
    let bulk_bps = bytes[bulk] as f64 * 8.0 / secs;
    assert!(
        (capped_bps / 10e6 - 1.0).abs() < 0.02,
        "capped stream at {capped_bps} bit/s"
    );
    // Work conservation: the bulk stream takes the rest of the link, not 60/85 of it.
    assert!(
        (bulk_bps / 90e6 - 1.0).abs() < 0.02,
        "bulk stream at {bulk_bps} bit/s"
    );
}

#[test]
fn s6_many_throttled_streams_do_not_stall_an_uncapped_one() {
    let mut sim = Sim::default_policy(100_000_000);
    for _ in 0..50 {
        let cap = RateCap {
            rate_bps: 200_000,
            burst_bytes: Some(9_216),
        };
        let c = StreamConfig {
            priority: Priority::ALL[7],
            weight: None,
            cap: Some(cap),
        };
        sim.add(c, 1200, Offer::Saturate { queued: 8 });
    }
    let probe = sim.rate(1, 500, 1_000_000);
    sim.run_for(500 * MS);
    let worst = sim.worst_sojourn(probe);
    // 50 capped streams share 10 Mbit/s, far below the link: the probe never queues
    // behind them for more than a packet or two.
    assert!(worst < MS, "probe waited {worst} ns");
}
