//! One link, many workers (T6): the workers together never exceed the link rate, tier
//! shares hold across workers, and the link stays work conserving. No lock, no shared
//! queue.
//!
//! Every `link_period` (<= 1 ms) each worker
//! 1. publishes, in its own single-writer [`DemandSlot`], its demand per tier: the
//!    tier's recent arrival rate (an EWMA over periods, so traffic that AQM or tail drop trims still counts) plus its queued bytes spread
//!    over [`QUEUE_HORIZON_NS`], so a backlogged tier asks for far more than a link;
//! 2. reads every slot and runs the same deterministic [`allocate_among`] every worker
//!    runs: tiers share the link by policy share, capped by their total demand (water
//!    filling, so an idle or light tier lends the rest, S2); each tier's allocation is
//!    split equally between the workers that carry it, capped by their demand; what no
//!    one asks for is spread evenly as slack over the workers still running (a worker
//!    that ended or failed asks for nothing and gets none; workers may count the live
//!    ones a period apart, and the ledger below still bounds the sum);
//! 3. moves its own pacing rate toward its allocation through the [`RateLedger`]: a
//!    decrease is applied to its scheduler first and then returned to the ledger; an
//!    increase is first claimed from the ledger (compare-and-swap, never beyond the
//!    link rate) and then applied from a fresh clock reading.
//!
//! Hence the sum of the rates the workers pace at never exceeds the link rate at any
//! instant, and each worker's bucket holds `burst / workers`: over any interval
//! starting at the dataplane's start the workers together send at most
//! `rate * t + burst`. Shares converge within about two periods of a change in
//! demand; the error bound is in `docs/DECISIONS.md`.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};
use crate::sched::policy::MAX_TIERS;

/// Queued bytes count as demand spread over this horizon (4 ms).
pub(crate) const QUEUE_HORIZON_NS: u64 = 4_000_000;

/// One worker's published demand, per tier, in bit/s.
#[derive(Debug)]
pub(crate) struct DemandSlot {
    demand: [AtomicU64; MAX_TIERS],
}

/// Shared by all workers: their demand slots and the ledger of granted rates.
#[derive(Debug)]
pub(crate) struct LinkBoard {
    slots: Vec<CachePadded<DemandSlot>>,
    pub(crate) ledger: RateLedger,
}

impl LinkBoard {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers)
                .map(|_| {
                    CachePadded::new(DemandSlot {
                        demand: std::array::from_fn(|_| AtomicU64::new(0)),
                    })
                })
                .collect(),
            ledger: RateLedger::new(),
        }
    }

    /// Publishes worker `w`'s demand (only worker `w` calls this).
    pub(crate) fn publish(&self, w: usize, demand: &[u64; MAX_TIERS]) {
        for (slot, &d) in self.slots[w].demand.iter().zip(demand) {
            // Relaxed: each word is read on its own; a stale value only delays
            // convergence by a period (partner: `read`'s Relaxed loads).
            slot.store(d, Ordering::Relaxed);
        }
    }

    /// Every worker's latest demand.
    pub(crate) fn read(&self, out: &mut Vec<[u64; MAX_TIERS]>) {
        out.clear();
        for slot in &self.slots {
            // Relaxed: partner of `publish`.
            out.push(std::array::from_fn(|t| {
                slot.demand[t].load(Ordering::Relaxed)
            }));
        }
    }
}

/// The sum of the pacing rates granted to workers, kept at or below the link rate.
///
/// `pub` only so that the loom models can reach it (`runtime::loom_access`); the
/// module is private.
#[derive(Debug)]
pub struct RateLedger {
    granted: AtomicU64,
}

impl RateLedger {
    /// An empty ledger: nothing granted.
    pub fn new() -> Self {
        Self {
            granted: AtomicU64::new(0),
        }
    }

    /// Claims up to `want` more bit/s without letting the total pass `link_bps`;
    /// returns what was claimed.
    pub fn claim(&self, want: u64, link_bps: u64) -> u64 {
        // Acquire on success: partner of `release`'s Release, so the releasing worker's
        // lowered rate (applied before its release) happens before our raise.
        let mut got = 0;
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |g| {
                got = want.min(link_bps.saturating_sub(g));
                (got > 0).then_some(g + got)
            });
        got
    }

    /// Returns `amount` bit/s (already removed from the worker's pacing rate).
    pub fn release(&self, amount: u64) {
        // Release: partner of `claim`'s Acquire.
        self.granted.fetch_sub(amount, Ordering::Release);
    }

    /// Total granted now.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }
}

/// Buffers `allocate` works in, sized once for the worker count (no allocation per
/// link period).
#[derive(Debug)]
pub(crate) struct Scratch {
    fixed: Vec<bool>,
    caps: Vec<u64>,
    ones: Vec<u64>,
    split: Vec<u64>,
    /// The last `allocate`'s allocation of the whole link per tier, bit/s: each tier's
    /// water-filled part of its demand plus its policy share of what no tier asked
    /// for. The tiers' allocations add up to the link rate.
    pub(crate) tier_alloc: [u64; MAX_TIERS],
}

impl Scratch {
    pub(crate) fn new(workers: usize) -> Self {
        let n = workers.max(MAX_TIERS);
        Self {
            fixed: vec![false; n],
            caps: vec![0; workers],
            ones: vec![1; workers],
            split: vec![0; workers],
            tier_alloc: [0; MAX_TIERS],
        }
    }
}

/// Water filling: shares `total` between entries in proportion to `weights`, none
/// above its cap; entries with weight 0 or cap 0 get 0. Returns what was handed out.
/// `fixed` is scratch of at least `weights.len()` entries.
pub(crate) fn waterfill(
    total: u64,
    weights: &[u64],
    caps: &[u64],
    out: &mut [u64],
    fixed: &mut [bool],
) -> u64 {
    let n = weights.len();
    let mut left = u128::from(total);
    for (i, o) in out.iter_mut().enumerate().take(n) {
        *o = 0;
        fixed[i] = weights[i] == 0 || caps[i] == 0;
    }
    loop {
        let wsum: u128 = (0..n)
            .filter(|&i| !fixed[i])
            .map(|i| u128::from(weights[i]))
            .sum();
        if wsum == 0 || left == 0 {
            break;
        }
        // Fix every entry whose cap is below its proportional offer, then redo.
        let mut capped = false;
        for i in 0..n {
            if !fixed[i] && u128::from(caps[i]) * wsum <= left * u128::from(weights[i]) {
                out[i] = caps[i];
                left -= u128::from(caps[i]);
                fixed[i] = true;
                capped = true;
            }
        }
        if !capped {
            for i in 0..n {
                if !fixed[i] {
                    out[i] = (left * u128::from(weights[i]) / wsum) as u64;
                }
            }
            break;
        }
    }
    out.iter().take(n).sum()
}

/// Worker `w`'s part of the link: its pacing rate and its tiers' weights (both in
/// bit/s), from every worker's demand. The same inputs give the same answer on every
/// worker.
#[cfg(test)]
pub(crate) fn allocate(
    link_bps: u64,
    shares: &[u64],
    demands: &[[u64; MAX_TIERS]],
    w: usize,
    scratch: &mut Scratch,
) -> (u64, [u64; MAX_TIERS]) {
    allocate_among(link_bps, shares, demands, w, demands.len(), scratch)
}

/// As [`allocate`], with `live` of the workers still running: the slack (what no one
/// asks for) and the weight floor are split between those, not wasted on workers that
/// ended (a stopped or failed worker publishes no demand, and paces nothing).
pub(crate) fn allocate_among(
    link_bps: u64,
    shares: &[u64],
    demands: &[[u64; MAX_TIERS]],
    w: usize,
    live: usize,
    scratch: &mut Scratch,
) -> (u64, [u64; MAX_TIERS]) {
    let tiers = shares.len();
    let workers = live.clamp(1, demands.len().max(1)) as u64;
    let mut tier_demand = [0u64; MAX_TIERS];
    for d in demands {
        for t in 0..tiers {
            tier_demand[t] = tier_demand[t].saturating_add(d[t]);
        }
    }
    let mut tier_alloc = [0u64; MAX_TIERS];
    let used = waterfill(
        link_bps,
        shares,
        &tier_demand[..tiers],
        &mut tier_alloc[..tiers],
        &mut scratch.fixed,
    );
    // What no tier asked for.
    let spare = link_bps - used.min(link_bps);
    let slack = spare / workers.max(1);
    let mut weights = [0u64; MAX_TIERS];
    let mut rate = slack;
    let total_share = u128::from(shares.iter().sum::<u64>().max(1));
    let Scratch {
        fixed,
        caps,
        ones,
        split,
        tier_alloc: alloc_out,
    } = scratch;
    // The spare goes to every tier by its share; the rounding rest to the first, so
    // the allocations add up to the link exactly.
    let mut handed = 0u64;
    *alloc_out = [0; MAX_TIERS];
    for t in 0..tiers {
        let part = (u128::from(spare) * u128::from(shares[t]) / total_share) as u64;
        alloc_out[t] = tier_alloc[t].saturating_add(part);
        handed = handed.saturating_add(alloc_out[t]);
    }
    if tiers > 0 {
        alloc_out[0] = alloc_out[0].saturating_add(link_bps.saturating_sub(handed));
    }
    for t in 0..tiers {
        for (c, d) in caps.iter_mut().zip(demands) {
            *c = d[t];
        }
        waterfill(tier_alloc[t], ones, caps, split, fixed);
        rate += split[w];
        // Slack is weighted by the policy's shares, so a tier that turns busy on this
        // worker before the next period still gets its share of the slack.
        let slack_part = u128::from(slack) * u128::from(shares[t]) / total_share;
        weights[t] = split[w].saturating_add(slack_part as u64);
        // Floor: a quarter of what the tier's policy share of an equal part of the link
        // would weigh. A tier with no demand here weighs nothing in the split above, and
        // the scheduler charges each packet served at `len / weight`: the first packet
        // of a tier returning from idle (or arriving before the next period) would be
        // charged as at a few bit/s and park the whole tier for seconds. With the floor
        // it is charged at most 4x its fair cost; the next period sets the real weight.
        // Busy tiers weigh far more than their floor, so their ratios stay exact.
        let floor = u128::from(link_bps / workers.max(1)) * u128::from(shares[t]) / total_share / 4;
        weights[t] = weights[t].max((floor as u64).max(1));
    }
    (rate, weights)
}

#[cfg(all(test, not(qos_loom)))]
mod tests {
    use super::*;

    const G: u64 = 1_000_000_000;
    const INF: u64 = u64::MAX / 64;

    fn row(d: &[u64]) -> [u64; MAX_TIERS] {
        let mut r = [0; MAX_TIERS];
        r[..d.len()].copy_from_slice(d);
        r
    }

    #[test]
    fn t6_uneven_tiers_across_two_workers_get_25_60_15() {
        // Worker 0: High and Medium backlogged; worker 1: Medium and Low.
        let demands = [row(&[INF, INF, 0]), row(&[0, INF, INF])];
        let shares = [25, 60, 15];
        let (r0, w0) = allocate(G, &shares, &demands, 0, &mut Scratch::new(2));
        let (r1, w1) = allocate(G, &shares, &demands, 1, &mut Scratch::new(2));
        assert_eq!(r0 + r1, G);
        assert_eq!(w0[0], G / 4);
        assert_eq!(w0[1] + w1[1], 6 * G / 10);
        assert_eq!(w1[2], 15 * G / 100);
        // The busy tiers' weights are the allocations, which make up the rate; the tier
        // with no demand here keeps its floor (a quarter of 15% of half the link).
        assert_eq!(r0, w0[..2].iter().sum::<u64>());
        assert_eq!(w0[2], G / 2 * 15 / 100 / 4);
    }

    /// The exported allocation per tier (`qos_bandwidth_allocated_mbps`): the link's
    /// shares after idle or light tiers' parts went to the others, adding up to the
    /// link; the same on every worker.
    #[test]
    fn t6_tier_allocation_redistributes_what_a_tier_does_not_ask_for() {
        let shares = [25, 60, 15];
        let mut sc = Scratch::new(2);
        // Everyone saturated: the policy's shares.
        allocate(
            G,
            &shares,
            &[row(&[INF, INF, INF]), row(&[INF, INF, INF])],
            0,
            &mut sc,
        );
        assert_eq!(sc.tier_alloc[..3], [G / 4, 6 * G / 10, 15 * G / 100]);
        // High idle everywhere: Medium and Low split the link 60:15.
        allocate(
            G,
            &shares,
            &[row(&[0, INF, INF]), row(&[0, INF, 0])],
            1,
            &mut sc,
        );
        assert_eq!(sc.tier_alloc[..3], [0, 8 * G / 10, 2 * G / 10]);
        // High asks for 10%: it gets that, the rest splits 60:15.
        allocate(
            G,
            &shares,
            &[row(&[G / 10, INF, INF]), row(&[0, 0, 0])],
            0,
            &mut sc,
        );
        assert_eq!(sc.tier_alloc[..3], [G / 10, 72 * G / 100, 18 * G / 100]);
        // Nobody asks for all of it: each gets its demand plus its share of the rest.
        allocate(
            G,
            &shares,
            &[row(&[G / 10, G / 10, 0]), row(&[0, 0, 0])],
            1,
            &mut sc,
        );
        let spare = G - 2 * G / 10;
        assert_eq!(
            sc.tier_alloc[..3],
            [
                G / 10 + spare / 4,
                G / 10 + spare * 6 / 10,
                spare * 15 / 100
            ]
        );
        assert_eq!(sc.tier_alloc.iter().sum::<u64>(), G);
    }

    #[test]
    fn t6_the_slack_goes_to_the_live_workers_only() {
        // Three workers, the third ended (no demand): the two live ones ask for 10% each.
        // Split two ways, the slack fills the link; split three ways, a third of it was
        // lost to the worker that ended.
        let demands = [row(&[0, G / 10, 0]), row(&[0, G / 10, 0]), row(&[0, 0, 0])];
        let shares = [25, 60, 15];
        let mut sc = Scratch::new(3);
        let live: u64 = (0..2)
            .map(|w| allocate_among(G, &shares, &demands, w, 2, &mut sc).0)
            .sum();
        assert_eq!(live, G - (G - 2 * G / 10) % 2);
        let all: u64 = (0..2)
            .map(|w| allocate(G, &shares, &demands, w, &mut sc).0)
            .sum();
        assert_eq!(all, 2 * G / 10 + 2 * ((G - 2 * G / 10) / 3));
    }

    #[test]
    fn t6_a_tier_without_demand_keeps_a_floor_weight_not_zero() {
        // Medium and Low saturate one worker, High is idle: High's weight is a quarter
        // of its policy share of the link, so its first packet back is charged at most
        // 4x its fair cost (it was charged at 1 bit/s, parking High for seconds).
        let demands = [row(&[0, INF, INF])];
        let (r, w) = allocate(G, &[25, 60, 15], &demands, 0, &mut Scratch::new(1));
        assert_eq!(r, G);
        assert_eq!(w[0], G / 4 / 4);
        assert_eq!((w[1], w[2]), (8 * G / 10, 2 * G / 10));
    }

    #[test]
    fn t6_idle_high_lends_its_share_80_20() {
        let demands = [row(&[0, INF, 0]), row(&[0, INF, INF])];
        let (r0, w0) = allocate(G, &[25, 60, 15], &demands, 0, &mut Scratch::new(2));
        let (r1, w1) = allocate(G, &[25, 60, 15], &demands, 1, &mut Scratch::new(2));
        assert_eq!(r0 + r1, G);
        assert_eq!(w0[1] + w1[1], 8 * G / 10);
        assert_eq!(w1[2], 2 * G / 10);
    }

    #[test]
    fn t6_light_demand_is_capped_and_the_rest_lent() {
        // Worker 1's Medium only needs 50 Mbit/s: worker 0's Medium takes the rest.
        let demands = [row(&[0, INF, 0]), row(&[0, 50_000_000, 0])];
        let (r0, _) = allocate(G, &[25, 60, 15], &demands, 0, &mut Scratch::new(2));
        let (r1, _) = allocate(G, &[25, 60, 15], &demands, 1, &mut Scratch::new(2));
        assert_eq!(r1, 50_000_000);
        assert_eq!(r0, G - 50_000_000);
    }

    #[test]
    fn t6_nothing_asked_spreads_the_link_as_slack() {
        let demands = [row(&[0, 0, 0]), row(&[0, 0, 0])];
        let (r0, w0) = allocate(G, &[25, 60, 15], &demands, 0, &mut Scratch::new(2));
        assert_eq!(r0, G / 2);
        assert_eq!(w0[..3], [G / 8, 3 * G / 10, 15 * G / 200]);
    }

    #[test]
    fn t6_a_thousand_workers_and_huge_rates_do_not_overflow() {
        let demands: Vec<_> = (0..1024).map(|i| row(&[INF, i, 0])).collect();
        let mut scratch = Scratch::new(1024);
        let total: u64 = (0..1024)
            .map(|w| allocate(u64::MAX / 2, &[25, 60, 15], &demands, w, &mut scratch).0)
            .sum();
        assert!(total <= u64::MAX / 2);
        let (r, _) = allocate(u64::MAX / 2, &[25, 60, 15], &demands[..1], 0, &mut scratch);
        assert!(r <= u64::MAX / 2);
    }

    #[test]
    fn t6_ledger_never_grants_beyond_the_link() {
        let l = RateLedger::new();
        assert_eq!(l.claim(600, 1000), 600);
        assert_eq!(l.claim(600, 1000), 400);
        assert_eq!(l.claim(1, 1000), 0);
        l.release(300);
        assert_eq!(l.claim(500, 1000), 300);
        assert_eq!(l.granted(), 1000);
    }
}
