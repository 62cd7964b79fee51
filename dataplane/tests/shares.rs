//! Fair shares between tiers (S1, S2), inside a tier (S3) and inside a priority (S4),
//! measured on the deterministic simulator against computed values.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::sync::Arc;

use qos_dataplane::sched::{
    Next, Policy, PolicySpec, Priority, Scheduler, SchedulerConfig, StreamConfig, StreamId,
};
use sim::{MS, SEC, Sim, jain};

const GBPS: u64 = 1_000_000_000;

/// Every tier saturated by several streams at each of its priorities.
fn saturate_all(sim: &mut Sim, priorities: &[u8]) {
    for &p in priorities {
        for k in 0..2 {
            sim.saturate(p, 600 + 400 * k);
        }
    }
}

fn assert_window_shares(sim: &Sim, policy: &Policy, from: u64, to: u64, expect: &[f64]) {
    let mut t = from;
    while t < to {
        let bytes = sim.tier_bytes(policy, t, t + 100 * MS);
        let total: u64 = bytes.iter().sum();
        assert!(total > 0);
        for (tier, (&b, &e)) in bytes.iter().zip(expect).enumerate() {
            let share = b as f64 / total as f64;
            assert!(
                (share - e).abs() <= 0.005,
                "window at {} ms, tier {tier}: share {share:.4}, expected {e} +- 0.005",
                t / MS
            );
        }
        t += 100 * MS;
    }
}

#[test]
fn s1_all_tiers_saturated_share_25_60_15_in_every_100ms_window() {
    let mut sim = Sim::default_policy(GBPS);
    saturate_all(&mut sim, &[0, 1, 2, 3, 4, 5, 6, 7]);
    sim.run_for(SEC);
    assert_window_shares(&sim, &Policy::default(), 0, SEC, &[0.25, 0.60, 0.15]);
    sim.assert_conserved();
}

#[test]
fn s1_classes5_preset_shares_30_25_25_15_5() {
    let policy = Policy::classes5();
    let mut sim = Sim::new(policy.clone(), GBPS);
    saturate_all(&mut sim, &[0, 1, 2, 3, 4, 5, 6, 7]);
    sim.run_for(500 * MS);
    assert_window_shares(&sim, &policy, 0, 500 * MS, &[0.30, 0.25, 0.25, 0.15, 0.05]);
}

#[test]
fn s2_high_idle_gives_medium_and_low_80_20() {
    let mut sim = Sim::default_policy(GBPS);
    saturate_all(&mut sim, &[0, 1, 2, 3, 4, 5]);
    sim.run_for(500 * MS);
    assert_window_shares(&sim, &Policy::default(), 0, 500 * MS, &[0.0, 0.80, 0.20]);
}

#[test]
fn s2_idle_share_is_redistributed_and_returned_when_high_wakes() {
    let mut sim = Sim::default_policy(GBPS);
    saturate_all(&mut sim, &[0, 1, 2, 3, 4, 5]);
    let high = sim.saturate(7, 1000);
    sim.sources[high].offer = sim::Offer::Off;
    sim.run_for(200 * MS);
    sim.sources[high].offer = sim::Offer::Saturate { queued: 64 };
    sim.run_for(300 * MS);
    let p = Policy::default();
    assert_window_shares(&sim, &p, 0, 200 * MS, &[0.0, 0.80, 0.20]);
    // Within 1 ms of waking, High holds its 25% (P5: idle share redistributed fast).
    let b = sim.tier_bytes(&p, 200 * MS + MS, 300 * MS);
    let share = b[0] as f64 / b.iter().sum::<u64>() as f64;
    assert!(
        (share - 0.25).abs() < 0.005,
        "High share after waking: {share}"
    );
    assert_window_shares(&sim, &p, 300 * MS, 500 * MS, &[0.25, 0.60, 0.15]);
}

#[test]
fn s3_inside_a_tier_byte_shares_follow_two_to_the_priority() {
    // Medium tier only (it gets the whole link): P2..P5, one stream each plus a
    // second P5 stream; shares are 2^p over the sum of weights, whatever packet sizes.
    let mut sim = Sim::default_policy(GBPS);
    let lens = [300, 1500, 700, 1100, 900];
    let prios = [2u8, 3, 4, 5, 5];
    for (&p, &len) in prios.iter().zip(&lens) {
        sim.saturate(p, len);
    }
    sim.run_for(SEC);
    let bytes = sim.source_bytes(100 * MS, SEC);
    let total: u64 = bytes.iter().sum();
    let shares: Vec<f64> = bytes.iter().map(|&b| b as f64 / total as f64).collect();
    let weights: Vec<f64> = prios.iter().map(|&p| f64::from(1u32 << p)).collect();
    assert_shares_follow_weights(&shares, &weights, |i| format!("stream {i} (P{})", prios[i]));
}

/// S3: each of `shares` (fractions of the bytes sent) within 2% relative of its weight
/// over the sum of `weights`; `name(i)` says which stream failed.
fn assert_shares_follow_weights(shares: &[f64], weights: &[f64], name: impl Fn(usize) -> String) {
    let wsum: f64 = weights.iter().sum();
    for (i, &got) in shares.iter().enumerate() {
        let want = weights[i] / wsum;
        assert!(
            (got / want - 1.0).abs() <= 0.02,
            "{}: {got:.5} of the bytes, want {want:.5}",
            name(i)
        );
    }
}

#[test]
fn s3_weight_override_replaces_two_to_the_priority() {
    let mut sim = Sim::default_policy(GBPS);
    let plain = sim.saturate(4, 1000);
    let heavy = StreamConfig {
        priority: Priority::ALL[4],
        weight: Some(48),
        cap: None,
    };
    let heavy = sim.add(heavy, 1000, sim::Offer::Saturate { queued: 64 });
    sim.run_for(300 * MS);
    let bytes = sim.source_bytes(0, 300 * MS);
    let ratio = bytes[heavy] as f64 / bytes[plain] as f64;
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.02,
        "48:16 weights gave {ratio}"
    );
}

/// Backlogged P7 streams of `classes5` (Critical is {P7} alone: base weight 2^7) with
/// the given weight overrides and `quantum_bytes`, 1000-byte packets, each stream
/// refilled as it is served: each stream's share of the bytes sent in `decisions`.
fn p7_override_shares(quantum_bytes: u32, weights: &[u16], decisions: u32) -> Vec<f64> {
    p7_override_shares_with_churn(quantum_bytes, weights, decisions, None)
}

/// [`p7_override_shares`], and with `churn = Some((every, rng))`, every `every`
/// decisions an extra backlogged P7 stream (weight 1-8, three packets, refilled as
/// served) is opened, or one of them closed (always when four are open), drawn from
/// `rng`. The shares are those of the `weights` streams among themselves.
fn p7_override_shares_with_churn(
    quantum_bytes: u32,
    weights: &[u16],
    decisions: u32,
    mut churn: Option<(u32, &mut sim::Rng)>,
) -> Vec<f64> {
    let spec = PolicySpec {
        quantum_bytes,
        ..PolicySpec::classes5()
    };
    let policy = Arc::new(spec.build().unwrap());
    let mut s: Scheduler<u32> = Scheduler::new(SchedulerConfig::default(), policy).unwrap();
    let p7 = |w: u16| StreamConfig {
        priority: Priority::ALL[7],
        weight: Some(w),
        cap: None,
    };
    let ids: Vec<_> = weights.iter().map(|&w| s.open(p7(w)).unwrap()).collect();
    for &id in &ids {
        for _ in 0..10 {
            s.enqueue(0, id, 0, 1000).unwrap();
        }
    }
    let (mut extra, mut bytes) = (Vec::new(), vec![0u64; ids.len()]);
    for d in 0..decisions {
        if let Some((every, rng)) = churn.as_mut()
            && d % *every == 0
        {
            if extra.len() > 3 || (!extra.is_empty() && rng.below(2) == 0) {
                let gone = extra.swap_remove(rng.below(extra.len() as u64) as usize);
                s.close(gone).unwrap();
                while s.pop_reclaimed().is_some() {}
            } else {
                let e = s.open(p7(rng.range(1, 8) as u16)).unwrap();
                for _ in 0..3 {
                    s.enqueue(0, e, 0, 1000).unwrap();
                }
                extra.push(e);
            }
        }
        let Next::Packet(p) = s.dequeue(0) else {
            panic!("every stream is backlogged")
        };
        if let Some(i) = ids.iter().position(|&x| x == p.stream) {
            bytes[i] += u64::from(p.len);
        }
        s.enqueue(0, p.stream, 0, 1000).unwrap();
    }
    let total: u64 = bytes.iter().sum();
    bytes.iter().map(|&b| b as f64 / total as f64).collect()
}

/// S3 with weight overrides far below the tier's base weight: a stream's quantum is
/// `Q * w / 2^7` here, 11.83 bytes for weight 1 with the default `Q`. Rounded down to
/// whole bytes every turn, weight 1 got 32.35% beside weight 2 (-2.9%) and 23.9% beside
/// weight 3 (-4.3%), and with `Q` = 64 both quanta of weights 1 and 3 were 1 byte
/// (50/50 for 25/75). Each turn's quantum is now rounded up or down so that it is
/// exact on average.
#[test]
fn s3_weight_overrides_below_the_tier_base_get_their_exact_share() {
    for (q, weights) in [
        (1514, vec![1u16, 2]),
        (1514, vec![1, 3]),
        (64, vec![1, 3]),
        (1514, vec![3, 5, 7]),
        (1514, vec![1, 2, 3, 4, 5, 6, 7, 129]),
        (100, vec![1, 1, 2, 5, 200]),
    ] {
        let shares = p7_override_shares(q, &weights, 200_000);
        let w: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        assert_shares_follow_weights(&shares, &w, |i| {
            format!("Q {q}, weights {weights:?}: weight {}", weights[i])
        });
    }
}

/// High with a weight-1 P7 stream of 9000-byte packets (a 23-byte quantum), backlogged
/// and alone for 100 decisions (its class boosts its quanta), then three greedy
/// default-weight P7 streams with 500 packets of 1500 bytes each. Returns the
/// scheduler, the light stream and the time.
fn boosted_by_a_jumbo_stream() -> (Scheduler<u32>, StreamId, u64) {
    let policy = Arc::new(Policy::default());
    let mut s: Scheduler<u32> = Scheduler::new(SchedulerConfig::default(), policy).unwrap();
    let light = s
        .open(StreamConfig {
            priority: Priority::ALL[7],
            weight: Some(1),
            cap: None,
        })
        .unwrap();
    for _ in 0..200 {
        s.enqueue(0, light, 0, 9000).unwrap();
    }
    let mut now = 0;
    for _ in 0..100 {
        now += 1000;
        let Next::Packet(d) = s.dequeue(now) else {
            panic!("the light stream is backlogged")
        };
        s.enqueue(now, d.stream, 0, 9000).unwrap();
    }
    for _ in 0..3 {
        let g = s.open(StreamConfig::with_priority(7)).unwrap();
        for _ in 0..500 {
            s.enqueue(now, g, 0, 1500).unwrap();
        }
    }
    (s, light, now)
}

/// S4/S13: a class whose quanta were doubled for a stream with packets far above its
/// quantum (weight 1 in High: 23.7 bytes a turn for 9000-byte packets) hands out plain
/// quanta again a few rounds after that stream is gone. The doubling once stayed until
/// the class ran out of packets: three greedy default-weight P7 streams that came after
/// took 129-130 packets a turn instead of 2 (their 3028-byte quantum), which also
/// switched AQM off for them and broke P7's budget.
#[test]
fn s13_quanta_doubled_for_jumbo_packets_come_back_once_the_stream_is_gone() {
    let (mut s, light, mut now) = boosted_by_a_jumbo_stream();
    s.close(light).unwrap();
    while s.pop_reclaimed().is_some() {}
    // Turns: maximal runs of one stream, over the last 2000 of 3000 decisions.
    let (mut turns, mut last, mut run) = (Vec::new(), None, 0u32);
    for i in 0..3000 {
        now += 1000;
        let Next::Packet(d) = s.dequeue(now) else {
            panic!("the greedy streams are backlogged")
        };
        s.enqueue(now, d.stream, 0, 1500).unwrap();
        if i < 1000 {
            continue;
        }
        if Some(d.stream) == last {
            run += 1;
        } else {
            if run > 0 {
                turns.push(run);
            }
            (run, last) = (1, Some(d.stream));
        }
    }
    let longest = turns.iter().max().copied().unwrap_or(run);
    assert!(turns.len() > 600, "{} turns", turns.len());
    assert!(
        longest <= 3,
        "a greedy P7 turn took {longest} packets of 1500 bytes for a 3028-byte quantum"
    );
}

#[test]
fn s4_equal_streams_are_byte_fair_and_each_served_once_per_round() {
    let mut sim = Sim::default_policy(GBPS);
    let n = 40;
    for i in 0..n {
        // Different packet sizes: fairness is in bytes, not packets.
        sim.saturate(3, 200 + (i as u32 * 37) % 1300);
    }
    sim.run_for(200 * MS);
    let bytes = sim.source_bytes(0, 200 * MS);
    let j = jain(&bytes);
    assert!(j >= 0.99, "Jain index {j}");
    // Turns: maximal runs of one stream. Every n consecutive turns hold every stream
    // exactly once: a round serves each backlogged stream, none twice.
    let mut turns = Vec::new();
    for s in &sim.sent {
        if turns.last() != Some(&s.stream) {
            turns.push(s.stream);
        }
    }
    assert!(turns.len() > 10 * n);
    for round in turns.windows(n) {
        let mut seen: Vec<_> = round.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            n,
            "a round of {n} turns skipped or repeated a stream"
        );
    }
}

/// S4: a stream that keeps one packet queued, topped up the moment it is sent, empties
/// after every packet. Were an emptied stream to rejoin ahead of the round with a fresh
/// quantum, it would be served before the greedy streams at every decision and take
/// nearly the whole tier; lingering (a stream that empties stays behind the round until
/// the round passes it) holds it to its round share: a third each with two greedy
/// streams of its priority and packet size.
#[test]
fn s4_a_stream_topped_up_each_time_it_empties_gets_only_its_round_share() {
    let mut sim = Sim::default_policy(GBPS);
    let greedy = [sim.saturate(4, 1500), sim.saturate(4, 1500)];
    let topped = sim.add(
        StreamConfig::with_priority(4),
        1500,
        sim::Offer::Saturate { queued: 1 },
    );
    sim.run_for(100 * MS);
    let bytes = sim.source_bytes(0, 100 * MS);
    let total: u64 = bytes.iter().sum();
    assert!(total > 10_000_000, "the link was busy: {total} bytes");
    for (name, i) in [
        ("greedy", greedy[0]),
        ("greedy", greedy[1]),
        ("topped up", topped),
    ] {
        let share = bytes[i] as f64 / total as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.01,
            "{name} stream {i} took {share:.4} of the tier, expected 1/3"
        );
    }
}

/// S13 with the cause still there: a weight-1 P7 stream of 9000-byte packets (a 23-byte
/// quantum) alone in High for 100 decisions raises its class's boost; three greedy
/// default-weight P7 streams then join and the light stream stays backlogged. Beside
/// streams in credit the light one costs one rotation a visit, so nothing presses the
/// boost up again: it decays, the greedy streams' turns come back to their quantum
/// (two 1500-byte packets for 3028 bytes) and stay there, and the light stream gets its
/// weighted share of High, 1/385, within 0.02% of the link (S3), not more.
#[test]
fn s13_a_boost_decays_while_the_jumbo_stream_that_raised_it_stays() {
    let (mut s, light, mut now) = boosted_by_a_jumbo_stream();
    // Turns of the greedy streams, and bytes per stream, after a transient of 20,000
    // decisions; every packet sent is replaced, so all four stay backlogged.
    let (mut longest, mut last, mut run, mut turns) = (0u32, None, 0u32, 0u32);
    let (mut light_bytes, mut total) = (0u64, 0u64);
    let mut transient_longest = 0u32;
    for i in 0..220_000u32 {
        now += 1000;
        let Next::Packet(d) = s.dequeue(now) else {
            panic!("all four streams are backlogged")
        };
        s.enqueue(now, d.stream, 0, d.len).unwrap();
        if Some(d.stream) == last {
            run += 1;
        } else {
            if last.is_some_and(|l| l != light) {
                if i < 20_000 {
                    transient_longest = transient_longest.max(run);
                } else {
                    longest = longest.max(run);
                    turns += 1;
                }
            }
            (run, last) = (1, Some(d.stream));
        }
        if i >= 20_000 {
            total += u64::from(d.len);
            if d.stream == light {
                light_bytes += u64::from(d.len);
            }
        }
    }
    println!("longest greedy turn: {transient_longest} packets in the transient, {longest} after");
    assert!(turns > 60_000, "{turns} greedy turns");
    assert!(
        longest <= 3,
        "a greedy P7 turn took {longest} packets of 1500 bytes for a 3028-byte quantum"
    );
    let share = light_bytes as f64 / total as f64;
    assert!(
        (share - 1.0 / 385.0).abs() < 0.0002,
        "the light stream got {:.4}% of the link, its weight gives {:.4}%",
        share * 100.0,
        100.0 / 385.0
    );
}

/// S3/S13: random sets of 2-7 greedy P7 streams whose overrides are mostly far below
/// Critical's base weight in `classes5` (1-8, some up to 400, against 128) with `Q` of
/// 64-1,514 bytes, so that many quanta are a few bytes for 1,000-byte packets and the
/// class's quanta are doubled and halved as debts come and go. While a change took
/// effect at the visit it happened at, 58 of these 200 sets had a stream more than 2%
/// off its weight (worst 11.3%); with changes that cannot favour a place in the round,
/// the worst is 0.34%.
#[test]
fn s3_s13_overrides_far_below_the_tier_base_keep_their_share_while_the_boost_moves() {
    let mut rng = sim::Rng::new(12_345);
    for _ in 0..200 {
        let q = [64, 100, 300, 1514][rng.below(4) as usize];
        let n = rng.range(2, 7) as usize;
        let weights: Vec<u16> = (0..n)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.range(1, 400) as u16
                } else {
                    rng.range(1, 8) as u16
                }
            })
            .collect();
        let shares = p7_override_shares(q, &weights, 200_000);
        let w: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        assert_shares_follow_weights(&shares, &w, |i| {
            format!("Q {q}, weights {weights:?}: weight {}", weights[i])
        });
    }
}

/// S3/S13 with control actions in boosted rounds: the sets above with weights 1-8
/// only, beside which extra backlogged P7 streams are opened and closed every 5-200
/// decisions. A close unlinks its stream from the middle of the round, which shifts
/// the class's count of removals by one for the streams ahead of it, so the payment
/// for a rise may land on a neighbour for a round (see `docs/DECISIONS.md`). The
/// persistent streams must still share their bytes by weight within 2%: 100 sets,
/// worst 0.09% (with a boost change taking effect at the visit it happened at: 14
/// streams past 2%, worst 3.2%).
#[test]
fn s3_s13_streams_opened_and_closed_mid_round_leave_a_boosted_class_fair() {
    let mut rng = sim::Rng::new(777);
    for _ in 0..100 {
        let q = [64, 100, 300, 1514][rng.below(4) as usize];
        let n = rng.range(2, 7) as usize;
        let weights: Vec<u16> = (0..n).map(|_| rng.range(1, 8) as u16).collect();
        let every = rng.range(5, 200) as u32;
        let shares = p7_override_shares_with_churn(q, &weights, 200_000, Some((every, &mut rng)));
        let w: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        assert_shares_follow_weights(&shares, &w, |i| {
            format!(
                "Q {q}, weights {weights:?}, churn every {every}: weight {}",
                weights[i]
            )
        });
    }
}
