//! S3 under mixed demand: streams sending a little less than their fair share next to
//! greedy streams of the same and neighbouring priorities. Every stream's long-run
//! throughput must match the hierarchical weighted max-min (water-filling) oracle of
//! `sim::oracle`, computed independently of the scheduler: within 2% relative or 0.02%
//! of the link (absolute) with constant-rate arrivals, within 3% or 0.03% with Poisson
//! arrivals (whose queues fluctuate).
//!
//! "Fair share" of a sparse stream is what the oracle gives it when every stream of the
//! mix is greedy; a sparse stream then offers a fraction of that. The oracle is fed the
//! demand each sparse stream actually offered during the measurement window (for Poisson
//! sources the realised rate, not the nominal one) and an unbounded demand for greedy
//! ones (`Offer::Saturate`). Throughput is measured after a warm-up, over a window of
//! about 60-100k packets whose edges are ramped (see `run_case`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::collections::HashMap;

use qos_dataplane::sched::{Policy, PolicySpec, StreamConfig, StreamId};
use sim::{MS, Offer, Rng, SEC, Sim, oracle, weighted_oracle};

const LINK: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Demand {
    /// Always backlogged.
    Greedy,
    /// Offers this fraction of its fair share.
    Fraction(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrivals {
    Cbr,
    Poisson,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    prio: u8,
    /// Weight override (`None`: `2^prio`).
    weight: Option<u16>,
    len: u32,
    demand: Demand,
}

impl Spec {
    fn config(&self) -> StreamConfig {
        StreamConfig {
            weight: self.weight,
            ..StreamConfig::with_priority(self.prio)
        }
    }

    /// `(priority, weight, offered)` for the oracle.
    fn claim(&self, offered_bps: f64) -> (u8, f64, f64) {
        let weight = self.weight.map_or(1u32 << self.prio, u32::from);
        (self.prio, f64::from(weight), offered_bps)
    }
}

struct Case {
    name: String,
    policy: Policy,
    streams: Vec<Spec>,
    arrivals: Arrivals,
    /// Seeds source phases (CBR) and gaps (Poisson).
    seed: u64,
    /// Packets to aim for in the measurement window (sets its length).
    packet_budget: f64,
    /// With `Some(k)`, the absolute part of the tolerance is `k` of the stream's own
    /// packets over the window instead of a fraction of the link (for mixes of
    /// thousands of streams, where the link fraction exceeds a stream's whole share).
    packet_tol: Option<f64>,
}

/// One stream's measured throughput against the oracle.
struct Row {
    index: usize,
    spec: Spec,
    got_bps: f64,
    want_bps: f64,
    /// Packets the stream had accepted and the scheduler dropped (over the whole run).
    dropped: u64,
    accepted: u64,
}

impl Row {
    fn rel(&self) -> f64 {
        (self.got_bps - self.want_bps) / self.want_bps.max(1.0)
    }
    fn describe(&self) -> String {
        let kind = match self.spec.demand {
            Demand::Greedy => "greedy".to_owned(),
            Demand::Fraction(f) => format!("{:.0}% of its share", 100.0 * f),
        };
        let drops = if self.dropped > 0 && self.spec.demand != Demand::Greedy {
            format!(
                "; {} of its {} packets dropped inside the scheduler",
                self.dropped, self.accepted
            )
        } else {
            String::new()
        };
        format!(
            "stream {} (P{}, {} B, {kind}): got {:.3}% of the link, oracle {:.3}% ({:+.2}% relative){drops}",
            self.index,
            self.spec.prio,
            self.spec.len,
            100.0 * self.got_bps / LINK as f64,
            100.0 * self.want_bps / LINK as f64,
            100.0 * self.rel()
        )
    }
}

struct Outcome {
    failures: Vec<String>,
    /// Largest `|deviation| / allowed` over the streams (<= 1 passes).
    worst_ratio: f64,
    worst: String,
    /// Packets each stream had accepted and the scheduler dropped (whole run).
    dropped: Vec<u64>,
}

/// What the oracle gives each stream when all of them are greedy.
fn fair_shares(policy: &Policy, streams: &[Spec]) -> Vec<f64> {
    let greedy: Vec<_> = streams.iter().map(|s| s.claim(2.0 * LINK as f64)).collect();
    weighted_oracle(policy, LINK as f64, &greedy)
}

/// Gives source `at`'s stream the weight override of `spec`, if any.
fn set_weight(sim: &mut Sim, at: usize, spec: &Spec) {
    if spec.weight.is_some() {
        let stream = sim.sources[at].stream;
        sim.sched.update(stream, spec.config()).unwrap();
    }
}

fn run_case(case: &Case) -> Outcome {
    let (rel_tol, abs_tol) = match case.arrivals {
        Arrivals::Cbr => (0.02, 0.0002),
        Arrivals::Poisson => (0.03, 0.0003),
    };
    let share = fair_shares(&case.policy, &case.streams);
    let mut rng = Rng::new(case.seed);
    let mut sim = Sim::new(case.policy.clone(), LINK);
    sim.heed_backpressure = true;
    sim.log_arrivals = true;
    let mut nominal = Vec::new();
    for (spec, &fair) in case.streams.iter().zip(&share) {
        match spec.demand {
            Demand::Greedy => {
                sim.add(spec.config(), spec.len, Offer::Saturate { queued: 2 });
                nominal.push(2.0 * LINK as f64);
            }
            Demand::Fraction(f) => {
                let rate = f * fair;
                match case.arrivals {
                    Arrivals::Cbr => {
                        let interval =
                            (f64::from(spec.len) * 8.0 * SEC as f64 / rate).round() as u64;
                        let phase = rng.below(interval);
                        let at = sim.rate_every(spec.prio, spec.len, interval, phase);
                        set_weight(&mut sim, at, spec);
                    }
                    Arrivals::Poisson => {
                        let at = sim.poisson(spec.prio, spec.len, rate, rng.next_u64());
                        set_weight(&mut sim, at, spec);
                    }
                }
                nominal.push(rate);
            }
        }
    }
    // Window length: about `packet_budget` packets at the expected rates.
    let expect = weighted_oracle(
        &case.policy,
        LINK as f64,
        &case
            .streams
            .iter()
            .zip(&nominal)
            .map(|(s, &d)| s.claim(d))
            .collect::<Vec<_>>(),
    );
    let packets_per_s: f64 = expect
        .iter()
        .zip(&case.streams)
        .map(|(&bps, s)| bps / 8.0 / f64::from(s.len))
        .sum();
    let window = ((case.packet_budget / packets_per_s) * SEC as f64) as u64;
    let window = window.clamp(2 * SEC, 30 * SEC) / MS * MS;
    let warm = 500 * MS;
    sim.run_events_for(warm + window);
    let (from, to) = (warm, warm + window);
    // Throughput over the window with its edges ramped (a trapezoid of weights, the
    // average over windows shifted across the ramp), so a burst of a round-robin turn
    // straddling an edge does not count as unfairness.
    let ramp = window / 5;
    let weight = |t: u64| {
        let up = t.saturating_sub(from) as f64 / ramp as f64;
        let down = to.saturating_sub(t) as f64 / ramp as f64;
        up.min(down).clamp(0.0, 1.0)
    };
    let secs = (window - ramp) as f64 / SEC as f64;
    let mut offered = vec![0.0; case.streams.len()];
    for &(at, src) in &sim.arrivals {
        offered[src] += weight(at) * f64::from(sim.sources[src].len);
    }
    let index: HashMap<StreamId, usize> = sim
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.stream, i))
        .collect();
    let mut got = vec![0.0; case.streams.len()];
    for s in &sim.sent {
        got[index[&s.stream]] += weight(s.at) * f64::from(s.len);
    }
    let demand: Vec<_> = case
        .streams
        .iter()
        .zip(&offered)
        .map(|(s, &b)| match s.demand {
            Demand::Greedy => s.claim(2.0 * LINK as f64),
            Demand::Fraction(_) => s.claim(b * 8.0 / secs),
        })
        .collect();
    let want = weighted_oracle(&case.policy, LINK as f64, &demand);
    let mut out = Outcome {
        failures: Vec::new(),
        worst_ratio: 0.0,
        worst: String::new(),
        dropped: Vec::new(),
    };
    for (i, spec) in case.streams.iter().enumerate() {
        let stats = sim.sched.stream_stats(sim.sources[i].stream).unwrap();
        let row = Row {
            index: i,
            spec: *spec,
            got_bps: got[i] * 8.0 / secs,
            want_bps: want[i],
            dropped: stats.enqueued - stats.dequeued - stats.queued,
            accepted: stats.enqueued,
        };
        out.dropped.push(row.dropped);
        let abs = match case.packet_tol {
            Some(k) => k * f64::from(spec.len) * 8.0 / secs,
            None => abs_tol * LINK as f64,
        };
        let allowed = (rel_tol * row.want_bps).max(abs);
        let ratio = (row.got_bps - row.want_bps).abs() / allowed;
        if ratio > out.worst_ratio {
            out.worst_ratio = ratio;
            out.worst = row.describe();
        }
        if ratio > 1.0 {
            out.failures
                .push(format!("{}: {}", case.name, row.describe()));
        }
    }
    let sent_in_window = sim
        .sent
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .count();
    eprintln!(
        "{}: {} streams, {:.1} s window (edges ramped), {} packets; worst: {} (uses {:.2} of its tolerance){}",
        case.name,
        case.streams.len(),
        secs,
        sent_in_window,
        out.worst,
        out.worst_ratio,
        if out.failures.is_empty() {
            String::new()
        } else {
            format!("; {} streams out of tolerance", out.failures.len())
        }
    );
    sim.assert_conserved();
    out
}

fn assert_cases(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        failures.extend(run_case(case).failures);
    }
    assert!(
        failures.is_empty(),
        "{} streams outside the tolerance:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn sparse(prio: u8, len: u32, fraction: f64) -> Spec {
    Spec {
        prio,
        weight: None,
        len,
        demand: Demand::Fraction(fraction),
    }
}

fn greedy(prio: u8, len: u32) -> Spec {
    Spec {
        prio,
        weight: None,
        len,
        demand: Demand::Greedy,
    }
}

/// Reported case (a): default policy, Medium tier only: 18 P4 streams at 83% of their
/// share next to one greedy P4 and one greedy P5 (reported: the greedy P4 stream got
/// 2.11% of the link).
fn case_a(arrivals: Arrivals) -> Case {
    let mut streams = vec![sparse(4, 1500, 0.83); 18];
    streams.push(greedy(4, 1500));
    streams.push(greedy(5, 1500));
    Case {
        name: format!("reported (a) {arrivals:?}"),
        policy: Policy::default(),
        streams,
        arrivals,
        seed: 0xa,
        packet_budget: 60_000.0,
        packet_tol: None,
    }
}

/// Reported case (b): 20 P2 streams at 90% of their share, a greedy P2 and a greedy P5
/// (reported: the greedy P2 stream got 3.11% of the link, the oracle gives 4.21%).
fn case_b(arrivals: Arrivals) -> Case {
    let mut streams = vec![sparse(2, 1500, 0.90); 20];
    streams.push(greedy(2, 1500));
    streams.push(greedy(5, 1500));
    Case {
        name: format!("reported (b) {arrivals:?}"),
        policy: Policy::default(),
        streams,
        arrivals,
        seed: 0xb,
        packet_budget: 60_000.0,
        packet_tol: None,
    }
}

/// Reported case (c): 10 P0 streams of 576 B at 90% of their share beside a greedy P0
/// and a greedy P1, High and Medium saturated (reported: the greedy P0 stream got 1.03%
/// of the link, the oracle gives 1.54%).
fn case_c(arrivals: Arrivals) -> Case {
    let mut streams = vec![sparse(0, 576, 0.90); 10];
    streams.push(greedy(0, 1500));
    streams.push(greedy(1, 1500));
    streams.push(greedy(7, 1500));
    streams.push(greedy(4, 1500));
    Case {
        name: format!("reported (c) {arrivals:?}"),
        policy: Policy::default(),
        streams,
        arrivals,
        seed: 0xc,
        packet_budget: 80_000.0,
        packet_tol: None,
    }
}

#[test]
fn s3_oracle_reproduces_the_reported_fair_shares() {
    // The fair-share construction and the oracle, checked against the figures the
    // finding quotes for cases (b) and (c) (computed by hand: (b) 20 * 0.9 * 4/116 of
    // the link to the sparse streams, the rest split 4:32; (c) Low's 15% split by
    // weight 1 (eleven P0) and 2 (P1), sparse P0 streams at 90%, the rest split 1:2).
    let greedy_share = |case: &Case, index: usize| {
        let share = fair_shares(&case.policy, &case.streams);
        let demand: Vec<(u8, f64)> = case
            .streams
            .iter()
            .zip(&share)
            .map(|(s, &fair)| match s.demand {
                Demand::Greedy => (s.prio, 2.0 * LINK as f64),
                Demand::Fraction(f) => (s.prio, f * fair),
            })
            .collect();
        oracle(&case.policy, LINK as f64, &demand)[index] / LINK as f64
    };
    let b = greedy_share(&case_b(Arrivals::Cbr), 20);
    let c = greedy_share(&case_c(Arrivals::Cbr), 10);
    let a = greedy_share(&case_a(Arrivals::Cbr), 18);
    eprintln!(
        "oracle: greedy P4 in (a) {:.2}%, greedy P2 in (b) {:.2}%, greedy P0 in (c) {:.2}% of the link",
        100.0 * a,
        100.0 * b,
        100.0 * c
    );
    assert!((b - 0.0421).abs() < 0.00005, "{b}");
    assert!((c - 0.0154).abs() < 0.00005, "{c}");
    // (a): 18 * 0.83 * 16/336 of the link to the sparse streams, the rest split 16:32.
    let want_a = (1.0 - 18.0 * 0.83 * 16.0 / 336.0) / 3.0;
    assert!((a - want_a).abs() < 1e-9, "{a} vs {want_a}");
}

#[test]
fn s3_reported_case_a_sparse_p4_beside_greedy_p4_and_p5_matches_oracle() {
    assert_cases(&[case_a(Arrivals::Cbr)]);
}

#[test]
fn s3_reported_case_b_sparse_p2_beside_greedy_p2_and_p5_matches_oracle() {
    assert_cases(&[case_b(Arrivals::Cbr)]);
}

#[test]
fn s3_reported_case_c_sparse_p0_beside_greedy_p0_and_p1_under_saturated_high_and_medium_matches_oracle()
 {
    assert_cases(&[case_c(Arrivals::Cbr)]);
}

#[test]
fn s3_reported_cases_with_poisson_arrivals_match_oracle() {
    assert_cases(&[
        case_a(Arrivals::Poisson),
        case_b(Arrivals::Poisson),
        case_c(Arrivals::Poisson),
    ]);
}

/// A random adversarial mix: 2-60 streams around one or two focus priorities (the same
/// priority and its neighbours), most of them offering 50-97% of their fair share, some
/// greedy, packet sizes 200-1500 B; sometimes every other tier saturated as well.
fn random_case(seed: u64, classes5: bool, arrivals: Arrivals) -> Case {
    let mut rng = Rng::new(seed);
    let policy = if classes5 {
        Policy::classes5()
    } else {
        Policy::default()
    };
    let n = rng.range(2, 60) as usize;
    let focus = [rng.below(8) as u8, rng.below(8) as u8];
    let two_foci = rng.below(2) == 0;
    let mut streams = Vec::new();
    for i in 0..n {
        let base = focus[usize::from(two_foci && i % 2 == 1)];
        let prio = (i64::from(base) + rng.range(0, 3) as i64 - 1).clamp(0, 7) as u8;
        let len = rng.range(200, 1500) as u32;
        // The first stream of each focus is greedy, so every mix has greedy neighbours.
        let demand = if i < 2 || rng.below(4) == 0 {
            Demand::Greedy
        } else {
            Demand::Fraction(rng.range(50, 97) as f64 / 100.0)
        };
        streams.push(Spec {
            prio,
            weight: None,
            len,
            demand,
        });
    }
    if rng.below(3) == 0 {
        let busy: Vec<usize> = streams.iter().map(|s| policy.tier_of(s.prio)).collect();
        for (t, tier) in policy.tiers().iter().enumerate() {
            if !busy.contains(&t) {
                streams.push(greedy(tier.priorities[0], 1500));
            }
        }
    }
    Case {
        name: format!(
            "seed {seed} {} {arrivals:?}",
            if classes5 { "classes5" } else { "default" }
        ),
        policy,
        streams,
        arrivals,
        seed,
        packet_budget: 100_000.0,
        packet_tol: None,
    }
}

#[test]
fn s3_random_mixed_demand_cbr_default_policy_matches_oracle() {
    let cases: Vec<Case> = (1..=8)
        .map(|seed| random_case(seed, false, Arrivals::Cbr))
        .collect();
    assert_cases(&cases);
}

#[test]
fn s3_random_mixed_demand_cbr_classes5_matches_oracle() {
    let cases: Vec<Case> = (101..=108)
        .map(|seed| random_case(seed, true, Arrivals::Cbr))
        .collect();
    assert_cases(&cases);
}

#[test]
fn s3_random_mixed_demand_poisson_both_presets_matches_oracle() {
    let cases: Vec<Case> = (201..=206)
        .map(|seed| random_case(seed, seed % 2 == 0, Arrivals::Poisson))
        .collect();
    assert_cases(&cases);
}

/// `case` with AQM switched off (S14 off, everything else as it was).
fn without_aqm(mut case: Case) -> Case {
    case.policy = PolicySpec {
        aqm: false,
        ..case.policy.spec().clone()
    }
    .build()
    .unwrap();
    case.name.push_str(" aqm off");
    case
}

/// The random mixes of seeds `seeds`, each with both presets under CBR arrivals and
/// one preset (alternating) under Poisson arrivals.
fn sweep(seeds: std::ops::Range<u64>) -> impl Iterator<Item = Case> {
    seeds.flat_map(|seed| {
        [
            random_case(seed, false, Arrivals::Cbr),
            random_case(seed, true, Arrivals::Cbr),
            random_case(seed, seed % 2 == 0, Arrivals::Poisson),
        ]
    })
}

#[test]
fn s3_a_wider_sweep_of_random_mixes_without_aqm_matches_oracle() {
    // The scheduler's own fairness, with nothing dropped: 120 more seeds (360 mixes)
    // beside the fixed ones above. Outside CI, seeds 1000-3499 (7,500 mixes) all
    // passed: worst 0.10 of the CBR tolerance and 0.59 of the Poisson one.
    let cases: Vec<Case> = sweep(1000..1120).map(without_aqm).collect();
    assert_cases(&cases);
}

#[test]
fn s3_s14_constant_rate_streams_below_their_share_lose_no_packet_in_a_wider_sweep() {
    // With AQM on (the default), constant-rate streams at 50-97% of their share next
    // to greedy ones: nothing of theirs is dropped inside the scheduler (by AQM or
    // any other reason), so the oracle holds as without AQM. (Poisson streams close to their share can lose a few percent to AQM: see
    // docs/DECISIONS.md, S14.)
    let cases: Vec<Case> = sweep(1000..1120)
        .filter(|c| c.arrivals == Arrivals::Cbr)
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = run_case(case);
        failures.extend(outcome.failures.iter().cloned());
        for (i, spec) in case.streams.iter().enumerate() {
            if spec.demand != Demand::Greedy && outcome.dropped[i] > 0 {
                failures.push(format!(
                    "{}: stream {i} (P{}, {:?}) lost {} packets inside the scheduler",
                    case.name, spec.prio, spec.demand, outcome.dropped[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The random mix of `seed` grown to 500-3,000 streams: its streams repeated in turn,
/// the added ones greedy one time in eight and otherwise at a fresh 50-97% of their
/// share, CBR arrivals, a 24 s window. A stream's share is then a few hundredths of a
/// percent of the link, below the usual absolute tolerance, so the tolerance's
/// absolute part is two of the stream's own packets over the window instead.
fn thousands(seed: u64, classes5: bool) -> Case {
    let mut case = random_case(seed, classes5, Arrivals::Cbr);
    let mut rng = Rng::new(seed ^ 0xdead);
    let n = rng.range(500, 3000) as usize;
    let base = case.streams.clone();
    case.streams = (0..n)
        .map(|i| {
            let mut s = base[i % base.len()];
            if i >= base.len() {
                s.demand = if rng.below(8) == 0 {
                    Demand::Greedy
                } else {
                    Demand::Fraction(rng.range(50, 97) as f64 / 100.0)
                };
            }
            s
        })
        .collect();
    case.packet_budget = 1_500_000.0;
    case.packet_tol = Some(2.0);
    case.name = format!("{} x{n}", case.name);
    case
}

#[test]
fn s3_s14_thousands_of_mixed_demand_streams_match_oracle_within_2pc_or_two_packets() {
    // Outside CI, seeds 1-20 with both presets (40 mixes of 589-2,891 streams): worst
    // 0.36 of this tolerance, no packet of a below-share stream dropped. It fails with
    // quanta computed from weights capped at 32 (P6 streams 2-13% off).
    let cases = [thousands(3, false), thousands(3, true), thousands(7, false)];
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = run_case(case);
        failures.extend(outcome.failures.iter().cloned());
        let lost: u64 = case
            .streams
            .iter()
            .zip(&outcome.dropped)
            .filter(|(s, _)| s.demand != Demand::Greedy)
            .map(|(_, &d)| d)
            .sum();
        if lost > 0 {
            failures.push(format!(
                "{}: below-share streams lost {lost} packets",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `case` with half its streams (drawn by `seed`) given a weight override between their
/// tier's base weight (that of its lowest priority) and four times its top one: every
/// quantum still covers a packet (the regime of the DRR lag bound).
fn with_overrides(mut case: Case, seed: u64) -> Case {
    let mut rng = Rng::new(seed ^ 0xbeef);
    for s in &mut case.streams {
        if rng.below(2) == 0 {
            let tier = &case.policy.tiers()[case.policy.tier_of(s.prio)];
            let base = 1u64 << tier.priorities.iter().min().unwrap();
            let top = 1u64 << tier.priorities.iter().max().unwrap();
            s.weight = Some(rng.range(base, 4 * top) as u16);
        }
    }
    case.name.push_str(" overrides");
    case
}

#[test]
fn s3_random_mixes_with_weight_overrides_match_the_weighted_oracle() {
    // Outside CI, seeds 1-149 (447 mixes): worst 0.31 of the tolerance. Overrides far
    // below the tier's base weight, whose quanta are below the packets, are tested
    // below and in shares.rs (`s3_s13_...`).
    let cases: Vec<Case> = sweep(2000..2060)
        .map(|c| {
            let seed = c.seed;
            with_overrides(without_aqm(c), seed)
        })
        .collect();
    assert_cases(&cases);
}

/// `streams` alone on the link under `policy` with AQM off, CBR arrivals.
fn alone_without_aqm(name: String, policy: Policy, streams: Vec<Spec>) -> Case {
    without_aqm(Case {
        name,
        policy,
        streams,
        arrivals: Arrivals::Cbr,
        seed: 1,
        packet_budget: 200_000.0,
        packet_tol: None,
    })
}

/// A greedy stream of priority `prio` with weight override `weight`.
fn greedy_weighted(prio: u8, weight: u16, len: u32) -> Spec {
    Spec {
        weight: Some(weight),
        ..greedy(prio, len)
    }
}

/// S3/S13: in `classes5`'s System tier (P6 alone, base weight 64: 23.7 bytes of quantum
/// per unit of weight), weights 3, 5 and 1 with 1,317/536/1,288-byte packets keep every
/// quantum far below the packets, so the class's quanta are doubled to bound the
/// rotations a decision makes (S13), and the doubling rises and falls as the streams'
/// debts come and go. When a change took effect at the visit it happened at, the
/// streams just after it in the (stable) round gained or lost every time: the weight-3
/// stream got 32.53% of the link for 33.33% (-2.4%), at 14 s and 24 s windows alike.
#[test]
fn s3_s13_a_boost_that_rises_and_falls_does_not_bias_three_streams_far_below_their_quanta() {
    assert_cases(&[alone_without_aqm(
        "classes5 System 3/5/1".to_owned(),
        Policy::classes5(),
        vec![
            greedy_weighted(6, 3, 1317),
            greedy_weighted(6, 5, 536),
            greedy_weighted(6, 1, 1288),
        ],
    )]);
}

/// S3/S13: random mixes of 2-6 greedy streams whose quanta are far below their packets
/// (weights 1-8 in `classes5`'s System tier, base weight 64; 200-1,514-byte packets),
/// and jumbo frames (200-9,000 bytes) at default weights in the default policy's High
/// tier, where a P6 quantum is 1,514 bytes. With the boost's changes favouring a place
/// in the round, 75 of 150 such System mixes were out of tolerance (worst -7.0%).
fn boosted_mix(seed: u64) -> Case {
    let mut rng = Rng::new(seed ^ 0xb005);
    let n = rng.range(2, 6) as usize;
    if seed.is_multiple_of(2) {
        let streams = (0..n)
            .map(|_| {
                let w = rng.range(1, 8) as u16;
                greedy_weighted(6, w, rng.range(200, 1514) as u32)
            })
            .collect();
        alone_without_aqm(
            format!("seed {seed} classes5 System weights 1-8"),
            Policy::classes5(),
            streams,
        )
    } else {
        let streams = (0..n)
            .map(|_| {
                let prio = 6 + rng.below(2) as u8;
                greedy(prio, rng.range(200, 9000) as u32)
            })
            .collect();
        alone_without_aqm(
            format!("seed {seed} default High jumbo"),
            Policy::default(),
            streams,
        )
    }
}

#[test]
fn s3_s13_random_mixes_far_below_their_quanta_match_the_weighted_oracle() {
    let cases: Vec<Case> = (0..40).map(boosted_mix).collect();
    assert_cases(&cases);
}

/// Found by a red-team review: a stream whose packets exceed its quantum and that
/// empties after each one left its debt behind once the round had gone by, came back
/// fresh with a full quantum and was served at once on every return. Paced at a rate
/// whose interval exceeds the round, it was never backlogged and took what it sent: a
/// weight-1 P7 stream of 9,000-byte packets at 400 Mbit/s got 400 (51x its share of
/// 7.75) beside a greedy P7, a P0 stream of 9,000-byte packets at 500 Mbit/s got 500
/// beside a greedy P1 where its share is 333, a P2 one 200 where it is 111. Its debt
/// now follows it until the rounds that repay it have gone by.
#[test]
fn s3_a_sparse_stream_of_packets_above_its_quantum_gets_no_more_than_its_share() {
    let gbit = 1_000_000_000u64;
    // (paced stream: priority, weight override, offered bit/s; greedy: priority).
    // The last two offer less than their share and must get all of it.
    let cases = [
        (7, Some(1), 400_000_000u64, 7),
        (7, Some(1), 50_000_000, 7),
        (0, None, 500_000_000, 1),
        (2, None, 200_000_000, 5),
        (7, Some(1), 7_000_000, 7),
        (0, None, 300_000_000, 1),
    ];
    for (aqm, disconnect) in [(true, true), (false, false)] {
        let policy = PolicySpec {
            aqm,
            disconnect,
            ..PolicySpec::default()
        }
        .build()
        .unwrap();
        for &(prio, weight, bps, greedy_prio) in &cases {
            let mut sim = Sim::new(policy.clone(), gbit);
            let greedy = sim.saturate(greedy_prio, 1_500);
            let config = StreamConfig {
                weight,
                ..StreamConfig::with_priority(prio)
            };
            let interval_ns = 9_000 * 8 * SEC / bps;
            let paced = sim.add(
                config,
                9_000,
                Offer::Rate {
                    interval_ns,
                    next_at: 0,
                },
            );
            sim.run_for(3 * SEC);
            sim.assert_conserved();
            let bytes = sim.source_bytes(SEC, 3 * SEC);
            let got = |i: usize| bytes[i] as f64 * 8.0 / 2.0;
            let w = |p: u8, o: Option<u16>| o.map_or(f64::from(1u32 << p), f64::from);
            let want = weighted_oracle(
                &policy,
                gbit as f64,
                &[
                    (greedy_prio, w(greedy_prio, None), f64::INFINITY),
                    (prio, w(prio, weight), bps as f64),
                ],
            );
            for (i, name) in [(greedy, "greedy"), (paced, "paced")] {
                let err = got(i) / want[usize::from(i == paced)] - 1.0;
                assert!(
                    err.abs() < 0.02,
                    "aqm {aqm}, P{prio} w {weight:?} at {bps} bit/s beside greedy \
                     P{greedy_prio}: {name} got {:.2} Mbit/s, max-min {:.2} ({:+.1}%)",
                    got(i) / 1e6,
                    want[usize::from(i == paced)] / 1e6,
                    err * 100.0
                );
            }
        }
    }
}
