//! S14: per-stream queue-delay control (CoDel). It keeps the standing queue of a stream
//! that offers more than its share short (served sojourn within the priority's budget),
//! counts its drops as `aqm` and hands them back; a stream within its share sees none;
//! `aqm: false` switches it off, and a tier's `AqmSpec` overrides the budget-derived
//! target and interval.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod sim;

use std::collections::HashMap;

use std::sync::Arc;

use qos_dataplane::sched::{
    AqmSpec, DropReason, Next, Policy, Priority, RateCap, Scheduler, SchedulerConfig, StreamConfig,
    StreamId,
};
use sim::{MS, SEC, Sim, policy_with};

const LINK: u64 = 100_000_000;
/// The budgeted priorities of the reference policy.
const BUDGETED: [u8; 6] = [2, 3, 4, 5, 6, 7];

/// Latency budget of `p` under `policy`, in ns.
fn budget(policy: &Policy, p: u8) -> u64 {
    policy.spec().latency_budget_ns[usize::from(p)].unwrap()
}

/// `q`-quantile (0..1) of `xs` (sorted in place), nearest rank.
fn quantile(xs: &mut [u64], q: f64) -> u64 {
    assert!(!xs.is_empty(), "no samples");
    xs.sort_unstable();
    let rank = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// Sojourns of the packets of priority `p` that left at or after `from`.
fn served_sojourns(sim: &Sim, p: u8, from: u64) -> Vec<u64> {
    sim.sent
        .iter()
        .filter(|s| s.priority == p && s.at >= from)
        .map(|s| s.sojourn_ns)
        .collect()
}

/// Drops handed back through `pop_reclaimed`, per stream and reason.
#[derive(Default)]
struct Reclaimed {
    by_stream: HashMap<(StreamId, DropReason), u64>,
}

impl Reclaimed {
    fn count(&self, stream: StreamId, reason: DropReason) -> u64 {
        self.by_stream.get(&(stream, reason)).copied().unwrap_or(0)
    }
    fn total(&self, reason: DropReason) -> u64 {
        self.by_stream
            .iter()
            .filter(|((_, r), _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs `sim` for `duration` in 50 ms steps, draining `pop_reclaimed` after each step
/// (tallied in `rec`, and counted in `sim.reclaimed` for `assert_conserved`).
fn run_draining(sim: &mut Sim, duration: u64, rec: &mut Reclaimed) {
    let end = sim.now + duration;
    while sim.now < end {
        sim.run_for((50 * MS).min(end - sim.now));
        while let Some(r) = sim.sched.pop_reclaimed() {
            *rec.by_stream.entry((r.stream, r.reason)).or_default() += 1;
            sim.reclaimed += 1;
        }
    }
}

/// 10x overload of the 100 Mbit/s link: `per_prio` constant-rate streams at each of
/// P2..P7 (lengths 1500/1000/500/200 B in turn), offering `10 * LINK` together.
fn overload(policy: Policy, per_prio: usize) -> Sim {
    let mut sim = Sim::new(policy, LINK);
    // Senders skip a packet while their queue is full (no disconnects without AQM).
    sim.heed_backpressure = true;
    let each = 10 * LINK / (BUDGETED.len() * per_prio) as u64;
    for p in BUDGETED {
        for k in 0..per_prio {
            sim.rate(p, [1_500, 1_000, 500, 200][k % 4], each);
        }
    }
    sim
}

/// p99 served sojourn (ns) per budgeted priority, for packets sent at or after `from`.
fn p99s(sim: &Sim, from: u64) -> Vec<(u8, u64)> {
    BUDGETED
        .iter()
        .map(|&p| (p, quantile(&mut served_sojourns(sim, p, from), 0.99)))
        .collect()
}

#[test]
fn s14_under_10x_overload_drops_are_aqm_handed_back_and_sojourn_settles_within_budget() {
    let policy = Policy::default();
    let mut sim = overload(policy.clone(), 4);
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, 2 * SEC, &mut rec);
    // Served packets of every budgeted priority, once the overload is established.
    let over: Vec<String> = p99s(&sim, 500 * MS)
        .into_iter()
        .filter(|&(p, p99)| p99 > budget(&policy, p))
        .map(|(p, p99)| format!("P{p} p99 {p99} ns > budget {}", budget(&policy, p)))
        .collect();
    assert!(over.is_empty(), "after 500 ms: {over:?}");
    // Every AQM drop is counted under `aqm`, per priority and per stream, and came back
    // through `pop_reclaimed` with that reason; nothing else was dropped inside.
    let mut aqm_total = 0;
    for p in BUDGETED {
        let ps = sim.sched.priority_stats(Priority::ALL[usize::from(p)]);
        let aqm = ps.dropped[DropReason::Aqm as usize];
        assert!(aqm > 0, "P{p}: the overload was cut by AQM");
        aqm_total += aqm;
        assert_eq!(ps.dropped[DropReason::Expired as usize], 0, "P{p}");
        assert_eq!(ps.disconnects, 0, "P{p}");
    }
    for src in &sim.sources {
        let st = sim.sched.stream_stats(src.stream).unwrap();
        assert_eq!(
            st.dropped_aqm,
            rec.count(src.stream, DropReason::Aqm),
            "stream {}: counted vs handed back",
            src.stream
        );
        assert!(st.is_conserved(), "{st:?}");
    }
    assert_eq!(rec.total(DropReason::Aqm), aqm_total);
    assert_eq!(rec.by_stream.len(), sim.sources.len(), "only aqm drops");
    // The link stayed busy: AQM cut the excess, not the service (>= 97% of 2 s).
    let bytes: u64 = sim.sent.iter().map(|s| u64::from(s.len)).sum();
    assert!(
        bytes * 8 >= LINK * 2 * 97 / 100,
        "{bytes} bytes sent in 2 s"
    );
    sim.assert_conserved();
}

/// S14 as written: "under 10x overload the served packets of a budgeted priority keep
/// p99 sojourn within its budget", counted over the whole overload, its onset included.
#[test]
fn s14_under_10x_overload_p99_sojourn_of_each_budgeted_priority_is_within_budget() {
    let policy = Policy::default();
    let mut sim = overload(policy.clone(), 4);
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, 2 * SEC, &mut rec);
    let all = p99s(&sim, 0);
    let over: Vec<String> = all
        .iter()
        .filter(|&&(p, p99)| p99 > budget(&policy, p))
        .map(|&(p, p99)| {
            format!(
                "P{p} p99 {:.1} ms > budget {} ms",
                p99 as f64 / 1e6,
                budget(&policy, p) / MS
            )
        })
        .collect();
    assert!(
        over.is_empty(),
        "4 streams per priority, 2 s: {over:?} (all p99 in ns: {all:?})"
    );
    sim.assert_conserved();
}

/// Many streams each offering twice their share: AQM must hold their standing queues
/// within the budget in steady state too, not only while the overload is 10x.
#[test]
fn s14_twenty_streams_at_twice_their_share_keep_p99_sojourn_within_budget() {
    let policy = Policy::default();
    let mut sim = Sim::new(policy.clone(), LINK);
    // Twenty P7 streams of 1000-byte packets at 10 Mbit/s each: High alone is
    // backlogged, so each one's share is 5 Mbit/s.
    for _ in 0..20 {
        sim.rate(7, 1_000, 2 * LINK / 20);
    }
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, SEC, &mut rec);
    assert!(rec.total(DropReason::Aqm) > 0, "the excess is dropped");
    let mut after = served_sojourns(&sim, 7, 200 * MS);
    let over = after.iter().filter(|&&s| s > budget(&policy, 7)).count();
    let n = after.len();
    let p99 = quantile(&mut after, 0.99);
    assert!(
        p99 <= budget(&policy, 7),
        "after 200 ms: p99 {:.1} ms, {over} of {n} packets over the {} ms budget",
        p99 as f64 / 1e6,
        budget(&policy, 7) / MS
    );
    sim.assert_conserved();
}

#[test]
fn s14_with_aqm_off_the_same_overload_queues_grow_and_nothing_is_dropped_as_aqm() {
    let on = Policy::default();
    let off = policy_with(|b| b.aqm = false);
    let mut with = overload(on.clone(), 4);
    let mut without = overload(off, 4);
    let (mut rec_with, mut rec_without) = (Reclaimed::default(), Reclaimed::default());
    run_draining(&mut with, SEC, &mut rec_with);
    run_draining(&mut without, SEC, &mut rec_without);
    assert!(rec_with.total(DropReason::Aqm) > 0, "control: AQM on drops");
    assert_eq!(rec_without.total(DropReason::Aqm), 0);
    for p in BUDGETED {
        let prio = Priority::ALL[usize::from(p)];
        let ps = without.sched.priority_stats(prio);
        assert_eq!(ps.dropped[DropReason::Aqm as usize], 0, "P{p}");
        // Sojourn far above budget, and standing queues far longer than with AQM.
        let p99 = quantile(&mut served_sojourns(&without, p, 0), 0.99);
        assert!(
            p99 > 5 * budget(&on, p),
            "P{p}: p99 {p99} ns without AQM, budget {}",
            budget(&on, p)
        );
        let queued_with = with.sched.priority_stats(prio).queued;
        assert!(
            ps.queued > 5 * queued_with.max(1),
            "P{p}: {} queued without AQM, {queued_with} with",
            ps.queued
        );
    }
    without.assert_conserved();
    with.assert_conserved();
}

/// The share a stream of priority `p` is guaranteed under `policy` when every stream of
/// its tier in `streams` (priorities, default weights) is backlogged and every tier too:
/// link x tier share x weight / sum of the weights of the tier's streams, in bit/s.
fn guaranteed_share(policy: &Policy, streams: &[u8], p: u8) -> f64 {
    let t = policy.tier_of(p);
    let wsum: f64 = streams
        .iter()
        .filter(|&&q| policy.tier_of(q) == t)
        .map(|&q| f64::from(Priority::ALL[usize::from(q)].default_weight()))
        .sum();
    let weight = f64::from(Priority::ALL[usize::from(p)].default_weight());
    LINK as f64 * f64::from(policy.tiers()[t].share_percent) / 100.0 * weight / wsum
}

/// Greedy streams of every priority (so every tier is backlogged and the shares are
/// the policy's), beside the `light` streams `(priority, len, fraction of share)`.
/// Returns the sim and, per light stream, its source index and rate.
fn within_share_mix(light: &[(u8, u32, f64)], poisson: bool) -> (Sim, Vec<(usize, f64)>) {
    let policy = Policy::default();
    let mut sim = Sim::new(policy.clone(), LINK);
    let greedy = [
        (7, 1_500),
        (6, 1_000),
        (5, 1_500),
        (4, 1_200),
        (3, 1_000),
        (2, 1_500),
        (1, 1_500),
        (0, 1_500),
    ];
    let mut prios: Vec<u8> = greedy.iter().map(|g| g.0).collect();
    prios.extend(light.iter().map(|l| l.0));
    for (p, len) in greedy {
        sim.saturate(p, len);
    }
    let mut out = Vec::new();
    for (k, &(p, len, frac)) in light.iter().enumerate() {
        let rate = guaranteed_share(&policy, &prios, p) * frac;
        let i = if poisson {
            sim.poisson(p, len, rate, 1_000 + k as u64)
        } else {
            sim.rate(p, len, rate as u64)
        };
        out.push((i, rate));
    }
    (sim, out)
}

/// Asserts that every light stream lost nothing (to AQM or otherwise) and got all it
/// sent but what is still queued.
fn assert_light_streams_untouched(sim: &Sim, light: &[(usize, f64)]) {
    for &(i, rate) in light {
        let src = &sim.sources[i];
        let st = sim.sched.stream_stats(src.stream).unwrap();
        assert_eq!(
            st.dropped_aqm,
            0,
            "P{} stream at {:.2} Mbit/s (within its share): {st:?}",
            src.priority,
            rate / 1e6
        );
        assert_eq!(
            st.enqueued,
            st.dequeued + st.queued,
            "P{}: {st:?}",
            src.priority
        );
        assert!(st.enqueued > 100, "P{} sent {}", src.priority, st.enqueued);
        assert!(
            st.queued <= 20,
            "P{}: {} still queued",
            src.priority,
            st.queued
        );
    }
}

#[test]
fn s14_stream_within_its_share_sees_no_aqm_drop() {
    // Constant-rate streams at 50-95% of their share, beside greedy streams of the same
    // and the neighbouring priorities, in all three tiers.
    let light = [
        (7, 200, 0.90),
        (6, 500, 0.60),
        (5, 1_000, 0.95),
        (4, 300, 0.50),
        (3, 1_500, 0.80),
        (2, 800, 0.70),
        (5, 64, 0.85),
        (7, 1_500, 0.75),
    ];
    let (mut sim, ids) = within_share_mix(&light, false);
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, 3 * SEC, &mut rec);
    assert_light_streams_untouched(&sim, &ids);
    // Control: the greedy streams beside them were cut by AQM.
    assert!(rec.total(DropReason::Aqm) > 0, "greedy streams are AQM'd");
    sim.assert_conserved();
}

#[test]
fn s14_poisson_stream_at_up_to_80_percent_of_its_share_sees_no_aqm_drop() {
    let light = [
        (7, 200, 0.8),
        (6, 500, 0.7),
        (5, 1_000, 0.8),
        (4, 300, 0.5),
        (3, 1_500, 0.6),
        (2, 800, 0.8),
    ];
    let (mut sim, ids) = within_share_mix(&light, true);
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, 3 * SEC, &mut rec);
    assert_light_streams_untouched(&sim, &ids);
    sim.assert_conserved();
}

/// One overloading stream each at P4 and P5 (Medium), for `duration`.
fn medium_overload(policy: Policy, duration: u64) -> (Sim, u64) {
    let mut sim = Sim::new(policy, LINK);
    sim.heed_backpressure = true;
    sim.rate(4, 1_000, 3 * LINK);
    sim.rate(5, 1_000, 3 * LINK);
    let mut rec = Reclaimed::default();
    run_draining(&mut sim, duration, &mut rec);
    sim.assert_conserved();
    (sim, rec.total(DropReason::Aqm))
}

#[test]
fn s14_a_tier_aqm_override_with_a_long_interval_drops_less_than_the_budget_default() {
    let default = Policy::default();
    let lenient = policy_with(|b| {
        b.tiers[1].aqm = Some(AqmSpec {
            target_ns: 10 * MS,
            interval_ns: 10 * SEC,
        })
    });
    let (sim_default, drops_default) = medium_overload(default.clone(), 500 * MS);
    let (sim_lenient, drops_lenient) = medium_overload(lenient, 500 * MS);
    assert!(drops_default > 0, "the budget-derived CoDel (50 ms) drops");
    assert!(
        drops_lenient < drops_default,
        "a 10 s interval drops {drops_lenient}, the default {drops_default}"
    );
    // Nothing can reach a 10 s interval in 500 ms: no drop at all, and the queue grows
    // past the budget.
    assert_eq!(drops_lenient, 0);
    for p in [4, 5] {
        let worst_default = *served_sojourns(&sim_default, p, 0).iter().max().unwrap();
        let worst_lenient = *served_sojourns(&sim_lenient, p, 0).iter().max().unwrap();
        assert!(
            worst_lenient > 2 * budget(&default, p) && worst_lenient > 2 * worst_default,
            "P{p}: worst {worst_lenient} ns with the override, {worst_default} without"
        );
    }
}

#[test]
fn s14_a_tier_aqm_override_with_a_short_interval_holds_sojourn_to_it() {
    let strict = policy_with(|b| {
        b.tiers[1].aqm = Some(AqmSpec {
            target_ns: MS,
            interval_ns: 5 * MS,
        })
    });
    let (sim_default, drops_default) = medium_overload(Policy::default(), SEC);
    let (sim_strict, drops_strict) = medium_overload(strict, SEC);
    assert!(
        drops_strict > drops_default,
        "{drops_strict} vs {drops_default}"
    );
    for p in [4, 5] {
        let p99_strict = quantile(&mut served_sojourns(&sim_strict, p, 200 * MS), 0.99);
        let p99_default = quantile(&mut served_sojourns(&sim_default, p, 200 * MS), 0.99);
        assert!(
            p99_strict <= 5 * MS,
            "P{p}: p99 {p99_strict} ns under a 5 ms interval"
        );
        assert!(
            p99_default > 10 * MS,
            "P{p}: control, the 50 ms budget lets {p99_default} ns stand"
        );
    }
}

/// One P3 stream kept at a 50 ms standing queue (budget 100 ms: target 20 ms, interval
/// 100 ms) for `dur` from `from`: a 1000-byte packet in every millisecond, one taken
/// every millisecond once 50 ms have passed, so CoDel pulls it down to about the
/// target (20 packets). Returns the `aqm` drops it saw and the time it ended.
fn standing_queue(s: &mut Scheduler<u32>, id: StreamId, from: u64, dur: u64) -> (u64, u64) {
    standing_queue_of(s, id, from, dur, &[1_000])
}

/// [`standing_queue`] with packet lengths taken from `lens` in turn.
fn standing_queue_of(
    s: &mut Scheduler<u32>,
    id: StreamId,
    from: u64,
    dur: u64,
    lens: &[u32],
) -> (u64, u64) {
    let before = s.stream_stats(id).unwrap().dropped_aqm;
    let mut now = from;
    let mut k = 0;
    while now < from + dur {
        s.enqueue(now, id, 0, lens[k % lens.len()]).unwrap();
        k += 1;
        if now >= from + 50 * MS {
            assert!(matches!(s.dequeue(now), Next::Packet(_)));
        }
        now += MS;
    }
    (s.stream_stats(id).unwrap().dropped_aqm - before, now)
}

#[test]
fn s14_small_head_packets_do_not_end_the_episode_of_a_mixed_size_standing_queue() {
    // 64-byte and 1000-byte packets in turn: AQM does not act on a 64-byte head with
    // fewer than 48 packets queued (its backlog estimate, packets x head length, is
    // under one turn), but that must not end CoDel's episode, or the interval never
    // runs out and only the hard limit (the budget) holds the queue.
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    let (drops, _) = standing_queue_of(&mut s, id, 0, 2 * SEC, &[64, 1_000]);
    let left = s.stream_stats(id).unwrap().queued;
    assert!(drops > 0, "a 50 ms standing queue sees aqm drops");
    assert!(left <= 25, "{left} packets left standing (target: 20)");
}

/// What a P3 stream's backlog goes through for a long while after a flood.
#[derive(Clone, Copy, PartialEq)]
enum Meanwhile {
    /// One packet in, one out each second: within one DRR turn, where AQM does not act.
    WithinOneTurn,
    /// Five packets deep (50 ms), one in and one out every 10 ms, AQM off by policy.
    AqmOff,
    /// Ten packets left queued and no call at all.
    NoCalls,
    /// Twenty packets queued and a cap of 1 bit/s put on the stream: its bucket's burst
    /// goes, then it is parked for hours with the rest queued, the caller asking every
    /// second; the cap is lifted at the end.
    Parked,
}

/// Drains stream `id` to `keep` packets at `now`, then for `minutes` puts one packet in
/// and takes one out every `step`: never empty. Returns the time at the end.
fn one_in_one_out(
    s: &mut Scheduler<u32>,
    id: StreamId,
    mut now: u64,
    (keep, step, minutes): (u64, u64, u64),
) -> u64 {
    while s.stream_stats(id).unwrap().queued > keep {
        let _ = s.dequeue(now);
    }
    for _ in 0..minutes * 60 * SEC / step {
        now += step;
        s.enqueue(now, id, 0, 1_000).unwrap();
        assert!(matches!(s.dequeue(now), Next::Packet(_)));
        assert_eq!(s.stream_stats(id).unwrap().queued, keep);
    }
    now
}

/// A flood leaves a P3 stream with a CoDel episode under way (every queued packet above
/// target); `meanwhile` happens for 45 minutes, then (in a second run) for 80; then a
/// standing queue builds again. CoDel's times are 32-bit (1.024 us units, wrapping every
/// 73.3 min, compared by wrapping difference within about 36.6 min), so the state left
/// by the flood must not be read as a time still in the future (45 minutes on: CoDel
/// silent) nor as a time long past (80 minutes on: a drop at every call until the
/// stale schedule catches up): the second standing queue must see as many `aqm` drops
/// as the first (within 2x) and be pulled down to the target as the first was.
fn assert_codel_recovers_after_45_and_80_minutes(meanwhile: Meanwhile) {
    for minutes in [45, 80] {
        assert_codel_recovers_after(meanwhile, minutes);
    }
}

fn assert_codel_recovers_after(meanwhile: Meanwhile, minutes: u64) {
    let mut s: Scheduler<u32> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(Policy::default())).unwrap();
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    let (first, mut now) = standing_queue(&mut s, id, 0, 2 * SEC);
    assert!(first > 0, "control: a 50 ms standing queue sees aqm drops");
    // 30 ms on, every queued packet is above target: CoDel starts its interval (or
    // goes on dropping), and that state stays behind.
    now += 30 * MS;
    while s.stream_stats(id).unwrap().queued > 10 {
        let _ = s.dequeue(now);
    }
    match meanwhile {
        Meanwhile::WithinOneTurn => now = one_in_one_out(&mut s, id, now, (1, SEC, minutes)),
        Meanwhile::AqmOff => {
            let off = policy_with(|b| {
                b.aqm = false;
                b.version = 2;
            });
            s.set_policy(now, Arc::new(off));
            now = one_in_one_out(&mut s, id, now, (5, 10 * MS, minutes));
        }
        Meanwhile::NoCalls => now += minutes * 60 * SEC,
        Meanwhile::Parked => {
            let cap = RateCap {
                rate_bps: 1,
                burst_bytes: None,
            };
            let capped = StreamConfig {
                cap: Some(cap),
                ..StreamConfig::with_priority(3)
            };
            // Its bucket holds 9216 bytes: of twenty packets nine go, and the rest (fewer
            // any AQM drops) are left to park.
            for _ in 0..10 {
                s.enqueue(now, id, 0, 1_000).unwrap();
            }
            s.update(id, capped).unwrap();
            // The burst goes (or AQM drops) until the stream waits for tokens, hours away.
            while let Next::Packet(_) = s.dequeue(now) {}
            for _ in 0..minutes * 60 {
                now += SEC;
                let _ = s.dequeue(now);
            }
            let parked = s.stream_stats(id).unwrap().queued;
            assert!(
                parked > 5,
                "{parked} packets parked: more than one turn's worth"
            );
            s.update(id, StreamConfig::with_priority(3)).unwrap();
        }
    }
    if meanwhile == Meanwhile::AqmOff {
        s.set_policy(now, Arc::new(policy_with(|b| b.version = 3)));
    }
    let (again, _) = standing_queue(&mut s, id, now, 2 * SEC);
    let left = s.stream_stats(id).unwrap().queued;
    assert!(
        again * 2 >= first && again <= 2 * first,
        "{again} aqm drops after {minutes} minutes against {first} at first"
    );
    assert!(
        left <= 25,
        "{left} packets left standing after {minutes} minutes (target: 20)"
    );
}

#[test]
fn s14_codel_state_left_by_a_flood_is_not_misread_after_45_or_80_minutes_within_one_turn() {
    // Before the fix: 0 drops against 31, and 55 packets left standing.
    assert_codel_recovers_after_45_and_80_minutes(Meanwhile::WithinOneTurn);
}

#[test]
fn s14_codel_state_left_by_a_flood_is_not_misread_after_45_or_80_minutes_with_aqm_off() {
    assert_codel_recovers_after_45_and_80_minutes(Meanwhile::AqmOff);
}

#[test]
fn s14_codel_state_left_by_a_flood_is_not_misread_after_45_or_80_minutes_without_a_call() {
    assert_codel_recovers_after_45_and_80_minutes(Meanwhile::NoCalls);
}

#[test]
fn s14_codel_state_left_by_a_flood_is_not_misread_after_45_or_80_minutes_parked_by_a_cap() {
    assert_codel_recovers_after_45_and_80_minutes(Meanwhile::Parked);
}

/// The share a P7 probe gets beside ten greedy P7 streams, with greedy P3 and P0 (every
/// tier backlogged): 25 Mbit/s / 11, a turn (two 1500-byte packets) every 10.6 ms
/// against the 10 ms budget.
const PROBE_SHARE: f64 = 0.25 * LINK as f64 / 11.0;

/// A P7 probe of 1500-byte packets at `frac` of [`PROBE_SHARE`] for 20 s, Poisson
/// (seed `seed`) or constant-rate (`None`); returns the share of its packets dropped
/// by AQM.
fn probe_aqm_loss(frac: f64, seed: Option<u64>) -> f64 {
    let mut sim = Sim::new(Policy::default(), LINK);
    for _ in 0..10 {
        sim.saturate(7, 1_500);
    }
    sim.saturate(3, 1_500);
    sim.saturate(0, 1_500);
    let probe = match seed {
        Some(seed) => sim.poisson(7, 1_500, PROBE_SHARE * frac, seed),
        None => sim.rate(7, 1_500, (PROBE_SHARE * frac) as u64),
    };
    sim.run_events_for(20 * SEC);
    sim.assert_conserved();
    let st = sim.sched.stream_stats(sim.sources[probe].stream).unwrap();
    assert!(st.enqueued > 3_000, "{st:?}");
    st.dropped_aqm as f64 / st.enqueued as f64
}

#[test]
fn s14_poisson_stream_at_90_percent_of_a_two_packet_share_loses_about_2_percent_to_aqm_never_5() {
    // An M/D/1 queue at 90% load waits about 4.5 service times on average (24 ms here),
    // so this stream's queue lives through many turns while it is within its share. A
    // count of 16 saturated turns took it for a stream above its share: 5.3-6.9% of its
    // packets were dropped (the max-min oracle tolerates 3% for Poisson arrivals). With
    // 64 the loss depends on the seed: over seeds 9000-9099 it was 0.4-4.6% (median
    // 1.8%, 90th percentile 2.8%, 6 of 100 above 3%); see docs/DECISIONS.md, S14. So
    // 20 seeds, held to that distribution rather than to one seed's luck.
    let mut losses: Vec<f64> = (0..20)
        .map(|seed| probe_aqm_loss(0.9, Some(7_000 + seed)))
        .collect();
    losses.sort_by(f64::total_cmp);
    let (median, worst) = ((losses[9] + losses[10]) / 2.0, losses[19]);
    assert!(
        median <= 0.025 && worst <= 0.05,
        "median {:.2}%, worst {:.2}% dropped by AQM: {losses:.4?}",
        median * 100.0,
        worst * 100.0
    );
}

#[test]
fn s14_constant_rate_stream_at_95_to_99_percent_of_a_two_packet_share_sees_no_aqm_drop() {
    // At 99% a packet could wait 14.8 ms, past the interval, while the stream's turns
    // ended saturated often enough to count it above its share: 0.24% were dropped.
    // (Exactly at its share the queue is critically loaded; not asserted.)
    for frac in [0.95, 0.97, 0.99] {
        let loss = probe_aqm_loss(frac, None);
        assert!(
            loss == 0.0,
            "at {frac}: {:.2}% dropped by AQM",
            loss * 100.0
        );
    }
}
