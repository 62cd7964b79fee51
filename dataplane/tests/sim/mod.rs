//! Deterministic simulation harness: a virtual clock, traffic sources and a fake link
//! that serialises packets at a fixed rate. Everything is integer nanoseconds, so a run
//! is exactly repeatable.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use qos_dataplane::sched::{
    Dequeued, Next, Policy, PolicySpec, Rejection, Scheduler, SchedulerConfig, StreamConfig,
    StreamId,
};

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;

/// How a source offers traffic.
#[derive(Clone, Copy, Debug)]
pub enum Offer {
    /// Always backlogged: keeps at least `queued` packets in its stream.
    Saturate { queued: u32 },
    /// Constant bit rate: one packet every `interval_ns`.
    Rate { interval_ns: u64, next_at: u64 },
    /// Poisson arrivals: exponential gaps of mean `mean_ns` (integer ns, at least 1),
    /// drawn from the xorshift state `rng`, so a run is exactly repeatable.
    Poisson {
        mean_ns: u64,
        next_at: u64,
        rng: u64,
    },
    /// Silent.
    Off,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub stream: StreamId,
    pub priority: u8,
    pub len: u32,
    pub offer: Offer,
}

/// One packet that left the fake link.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub at: u64,
    pub stream: StreamId,
    pub len: u32,
    pub priority: u8,
    pub sojourn_ns: u64,
    pub seq: u64,
}

pub struct Sim {
    pub sched: Scheduler<u64>,
    pub now: u64,
    /// Link serialisation cost; 0 means an infinitely fast link (only the scheduler paces).
    pub ns_per_byte: u64,
    pub sources: Vec<Source>,
    pub sent: Vec<Sent>,
    pub link_free_at: u64,
    next_seq: u64,
    last_seq: HashMap<StreamId, u64>,
    /// Packets the scheduler accepted (Ok).
    pub accepted: u64,
    /// Packets handed back as dropped (tail drop or disconnect).
    pub returned_dropped: u64,
    /// Packets handed back as refused.
    pub returned_refused: u64,
    /// When set, constant-rate sources heed backpressure: they skip a packet (drop it
    /// at the source) while their stream's queue is full, instead of pushing into it
    /// and being disconnected (S8).
    pub heed_backpressure: bool,
    /// Packets skipped at the source that way.
    pub skipped_at_source: u64,
    /// Packets taken from `pop_reclaimed` during a run (`run_events_for` drains them as
    /// it goes); `assert_conserved` counts them.
    pub reclaimed: u64,
    /// When set, every packet offered is logged in `arrivals`.
    pub log_arrivals: bool,
    /// `(time, source)` of every packet offered, whatever came of it (with `log_arrivals`).
    pub arrivals: Vec<(u64, usize)>,
}

/// Bits per second to nanoseconds per byte (exact for the rates the tests use).
pub fn ns_per_byte(rate_bps: u64) -> u64 {
    assert_eq!(
        8 * SEC % rate_bps,
        0,
        "choose a rate with an integral ns per byte"
    );
    8 * SEC / rate_bps
}

impl Sim {
    pub fn new(policy: Policy, link_bps: u64) -> Self {
        let config = SchedulerConfig {
            max_streams: 4096,
            max_packets: 1 << 20,
            event_capacity: 1 << 16,
        };
        let sched = Scheduler::new(config, Arc::new(policy)).expect("valid config");
        let ns_per_byte = if link_bps == 0 {
            0
        } else {
            ns_per_byte(link_bps)
        };
        Self {
            sched,
            now: 0,
            ns_per_byte,
            sources: Vec::new(),
            sent: Vec::new(),
            link_free_at: 0,
            next_seq: 0,
            last_seq: HashMap::new(),
            accepted: 0,
            returned_dropped: 0,
            returned_refused: 0,
            heed_backpressure: false,
            skipped_at_source: 0,
            reclaimed: 0,
            log_arrivals: false,
            arrivals: Vec::new(),
        }
    }

    pub fn default_policy(link_bps: u64) -> Self {
        Self::new(Policy::default(), link_bps)
    }

    /// Opens a stream with `config` and attaches a source to it; returns its index.
    pub fn add(&mut self, config: StreamConfig, len: u32, offer: Offer) -> usize {
        let stream = self.sched.open(config).expect("open");
        self.sources.push(Source {
            stream,
            priority: config.priority.get(),
            len,
            offer,
        });
        self.sources.len() - 1
    }

    /// A saturating stream at `priority`.
    pub fn saturate(&mut self, priority: u8, len: u32) -> usize {
        self.add(
            StreamConfig::with_priority(priority),
            len,
            Offer::Saturate { queued: 64 },
        )
    }

    /// A constant-rate stream at `priority` offering `rate_bps`.
    pub fn rate(&mut self, priority: u8, len: u32, rate_bps: u64) -> usize {
        let interval_ns = u64::from(len) * 8 * SEC / rate_bps;
        let offer = Offer::Rate {
            interval_ns: interval_ns.max(1),
            next_at: self.now,
        };
        self.add(StreamConfig::with_priority(priority), len, offer)
    }

    fn offer(&mut self, src: usize, at: u64) {
        let Source { stream, len, .. } = self.sources[src];
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.log_arrivals {
            self.arrivals.push((at, src));
        }
        match self.sched.enqueue(at, stream, seq, len) {
            Ok(()) => self.accepted += 1,
            Err(r) => match r.reason {
                Rejection::Dropped(_) => self.returned_dropped += 1,
                Rejection::Refused(_) => self.returned_refused += 1,
            },
        }
    }

    fn queue_full(&self, src: usize) -> bool {
        let depth = u64::from(self.sched.policy().spec().max_queue_depth);
        self.sched
            .stream_stats(self.sources[src].stream)
            .is_some_and(|s| s.queued >= depth)
    }

    fn next_arrival(&self) -> u64 {
        self.sources
            .iter()
            .filter_map(|s| match s.offer {
                Offer::Rate { next_at, .. } | Offer::Poisson { next_at, .. } => Some(next_at),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    fn feed(&mut self) {
        for i in 0..self.sources.len() {
            match self.sources[i].offer {
                Offer::Rate {
                    interval_ns,
                    mut next_at,
                } => {
                    while next_at <= self.now {
                        if self.heed_backpressure && self.queue_full(i) {
                            self.skipped_at_source += 1;
                        } else {
                            self.offer(i, next_at);
                        }
                        next_at += interval_ns;
                    }
                    self.sources[i].offer = Offer::Rate {
                        interval_ns,
                        next_at,
                    };
                }
                Offer::Poisson { mut next_at, .. } => {
                    while next_at <= self.now {
                        next_at = self.arrive(i).expect("a Poisson source");
                    }
                }
                Offer::Saturate { queued } => {
                    let stream = self.sources[i].stream;
                    let Some(stats) = self.sched.stream_stats(stream) else {
                        continue;
                    };
                    for _ in stats.queued..u64::from(queued) {
                        self.offer(i, self.now);
                    }
                }
                Offer::Off => {}
            }
        }
    }

    /// Books a packet that left the scheduler onto the fake link, checking that packets
    /// of one stream keep their order.
    fn record_sent(&mut self, d: &Dequeued<u64>) {
        let last = self.last_seq.insert(d.stream, d.packet);
        assert!(
            last.is_none_or(|l| l < d.packet),
            "reordered inside a stream"
        );
        self.sent.push(Sent {
            at: self.now,
            stream: d.stream,
            len: d.len,
            priority: d.priority.get(),
            sojourn_ns: d.sojourn_ns,
            seq: d.packet,
        });
        self.link_free_at = self.now + u64::from(d.len) * self.ns_per_byte;
    }

    /// Runs the virtual clock forward by `duration_ns`.
    pub fn run_for(&mut self, duration_ns: u64) {
        let end = self.now + duration_ns;
        while self.now < end {
            self.feed();
            if self.link_free_at > self.now {
                self.now = self.link_free_at.min(self.next_arrival()).min(end);
                continue;
            }
            match self.sched.dequeue(self.now) {
                Next::Packet(d) => {
                    self.record_sent(&d);
                }
                Next::Wait { until_ns } => {
                    assert!(until_ns > self.now, "a wait must lie in the future");
                    self.now = until_ns.min(self.next_arrival()).min(end);
                }
                Next::Idle => self.now = self.next_arrival().min(end),
            }
        }
    }

    /// Bytes sent per tier (under `policy`) in `[from, to)`.
    pub fn tier_bytes(&self, policy: &Policy, from: u64, to: u64) -> Vec<u64> {
        let mut bytes = vec![0; policy.tiers().len()];
        for s in self.sent.iter().filter(|s| s.at >= from && s.at < to) {
            bytes[policy.tier_of(s.priority)] += u64::from(s.len);
        }
        bytes
    }

    /// Bytes sent per source in `[from, to)`.
    pub fn source_bytes(&self, from: u64, to: u64) -> Vec<u64> {
        let index: HashMap<StreamId, usize> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.stream, i))
            .collect();
        let mut bytes = vec![0; self.sources.len()];
        for s in self.sent.iter().filter(|s| s.at >= from && s.at < to) {
            bytes[index[&s.stream]] += u64::from(s.len);
        }
        bytes
    }

    /// Sojourn times of every packet source `src` got through, in send order.
    pub fn sojourns(&self, src: usize) -> Vec<u64> {
        let id = self.sources[src].stream;
        self.sent
            .iter()
            .filter(|s| s.stream == id)
            .map(|s| s.sojourn_ns)
            .collect()
    }

    /// Longest sojourn of source `src` (0 if nothing was sent).
    pub fn worst_sojourn(&self, src: usize) -> u64 {
        self.sojourns(src).into_iter().max().unwrap_or(0)
    }

    /// Asserts S11 for the shard against the harness's own bookkeeping.
    pub fn assert_conserved(&mut self) {
        let mut reclaimed = 0;
        while self.sched.pop_reclaimed().is_some() {
            reclaimed += 1;
        }
        reclaimed += self.reclaimed;
        let shard = self.sched.shard_stats();
        assert!(shard.is_conserved(), "{shard:?}");
        let t = shard.totals;
        assert_eq!(t.enqueued, self.accepted + self.returned_dropped);
        assert_eq!(t.dequeued, self.sent.len() as u64);
        assert_eq!(t.dropped_total(), self.returned_dropped + reclaimed);
        assert_eq!(t.queued, self.accepted - self.sent.len() as u64 - reclaimed);
        assert_eq!(shard.refused.iter().sum::<u64>(), self.returned_refused);
    }
}

/// A policy built from the reference one with `edit` applied.
pub fn policy_with(edit: impl FnOnce(&mut PolicySpec)) -> Policy {
    let mut b = PolicySpec::default();
    edit(&mut b);
    b.build().expect("valid test policy")
}

/// Jain's fairness index of `xs`.
pub fn jain(xs: &[u64]) -> f64 {
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sq: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
    sum * sum / (xs.len() as f64 * sq)
}

// ----- additions for the adversarial tests (fairness, wrap, aging, determinism) --------

impl Sim {
    /// A constant-rate stream whose first packet arrives at `first_at` and then one every
    /// `interval_ns` (use it to give sources distinct phases).
    pub fn rate_every(&mut self, priority: u8, len: u32, interval_ns: u64, first_at: u64) -> usize {
        let offer = Offer::Rate {
            interval_ns: interval_ns.max(1),
            next_at: first_at,
        };
        self.add(StreamConfig::with_priority(priority), len, offer)
    }

    /// A Poisson stream at `priority` offering `rate_bps` on average, its gaps drawn from
    /// a generator seeded with `seed`.
    pub fn poisson(&mut self, priority: u8, len: u32, rate_bps: f64, seed: u64) -> usize {
        let mean_ns = ((f64::from(len) * 8.0 * SEC as f64 / rate_bps).round() as u64).max(1);
        let mut rng = Rng::new(seed).0;
        let next_at = self.now + exp_ns(mean_ns, &mut rng);
        let offer = Offer::Poisson {
            mean_ns,
            next_at,
            rng,
        };
        self.add(StreamConfig::with_priority(priority), len, offer)
    }

    /// Offers the next packet of constant-rate or Poisson source `src` (at its scheduled
    /// time, or skips it while the queue is full and `heed_backpressure` is set) and
    /// returns when the one after it arrives; `None` for other sources.
    pub fn arrive(&mut self, src: usize) -> Option<u64> {
        let at = match self.sources[src].offer {
            Offer::Rate { next_at, .. } | Offer::Poisson { next_at, .. } => next_at,
            Offer::Saturate { .. } | Offer::Off => return None,
        };
        if self.heed_backpressure && self.queue_full(src) {
            self.skipped_at_source += 1;
        } else {
            self.offer(src, at);
        }
        let next = match &mut self.sources[src].offer {
            Offer::Rate {
                interval_ns,
                next_at,
            } => {
                *next_at += *interval_ns;
                *next_at
            }
            Offer::Poisson {
                mean_ns,
                next_at,
                rng,
            } => {
                *next_at += exp_ns(*mean_ns, rng);
                *next_at
            }
            Offer::Saturate { .. } | Offer::Off => unreachable!("checked above"),
        };
        Some(next)
    }

    /// Tops a saturating source up to its target backlog.
    fn top_up(&mut self, src: usize) {
        let Offer::Saturate { queued } = self.sources[src].offer else {
            return;
        };
        let Some(stats) = self.sched.stream_stats(self.sources[src].stream) else {
            return;
        };
        for _ in stats.queued..u64::from(queued) {
            self.offer(src, self.now);
        }
    }

    /// Same model as [`Sim::run_for`] (sources, fake link, checks), driven by an
    /// arrival heap instead of a scan of every source per step, so thousands of sources
    /// cost O(log n) per packet: a saturating source is topped up when one of its
    /// packets leaves (dequeued, or dropped inside the scheduler; reclaimed packets are
    /// drained as they appear and counted in `reclaimed`).
    pub fn run_events_for(&mut self, duration_ns: u64) {
        let end = self.now + duration_ns;
        let slots = self
            .sources
            .iter()
            .map(|s| s.stream.index() as usize + 1)
            .max()
            .unwrap_or(0);
        let mut by_slot = vec![usize::MAX; slots];
        let mut heap = BinaryHeap::new();
        for i in 0..self.sources.len() {
            by_slot[self.sources[i].stream.index() as usize] = i;
            match self.sources[i].offer {
                Offer::Rate { next_at, .. } | Offer::Poisson { next_at, .. } => {
                    heap.push(Reverse((next_at, i)));
                }
                Offer::Saturate { .. } => self.top_up(i),
                Offer::Off => {}
            }
        }
        let source_of = |by_slot: &[usize], id: StreamId| {
            by_slot
                .get(id.index() as usize)
                .copied()
                .filter(|&i| i != usize::MAX)
        };
        while self.now < end {
            while let Some(&Reverse((at, i))) = heap.peek() {
                if at > self.now {
                    break;
                }
                heap.pop();
                if let Some(next) = self.arrive(i) {
                    heap.push(Reverse((next, i)));
                }
            }
            let next_arrival = heap.peek().map_or(u64::MAX, |r| r.0.0);
            if self.link_free_at > self.now {
                self.now = self.link_free_at.min(next_arrival).min(end);
                continue;
            }
            match self.sched.dequeue(self.now) {
                Next::Packet(d) => {
                    self.record_sent(&d);
                    if let Some(i) = source_of(&by_slot, d.stream) {
                        self.top_up(i);
                    }
                }
                Next::Wait { until_ns } => {
                    assert!(until_ns > self.now, "a wait must lie in the future");
                    self.now = until_ns.min(next_arrival).min(end);
                }
                Next::Idle => self.now = next_arrival.min(end),
            }
            while let Some(r) = self.sched.pop_reclaimed() {
                self.reclaimed += 1;
                if let Some(i) = source_of(&by_slot, r.stream) {
                    self.top_up(i);
                }
            }
        }
    }

    /// Bytes offered per source in `[from, to)` (needs `log_arrivals`).
    pub fn offered_bytes(&self, from: u64, to: u64) -> Vec<u64> {
        let mut bytes = vec![0; self.sources.len()];
        for &(at, src) in &self.arrivals {
            if at >= from && at < to {
                bytes[src] += u64::from(self.sources[src].len);
            }
        }
        bytes
    }
}

/// Small deterministic generator (xorshift64*), so every case is reproducible.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator whose sequence depends only on `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        xorshift(&mut self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// An exponential gap of mean `mean_ns`, rounded to whole ns and at least 1.
pub fn exp_ns(mean_ns: u64, state: &mut u64) -> u64 {
    let u = (xorshift(state) >> 11) as f64 / (1u64 << 53) as f64;
    let gap = -(1.0 - u).ln() * mean_ns as f64;
    (gap.round() as u64).max(1)
}

/// Weighted water-filling of `capacity` among `(weight, demand)` pairs: every claim gets
/// `min(demand, weight * level)`, the level chosen so that the capacity is used up
/// (or every demand met).
pub fn waterfill(capacity: f64, claims: &[(f64, f64)]) -> Vec<f64> {
    let mut alloc = vec![0.0; claims.len()];
    let mut open: Vec<usize> = (0..claims.len()).filter(|&i| claims[i].1 > 0.0).collect();
    let mut left = capacity;
    while !open.is_empty() {
        let wsum: f64 = open.iter().map(|&i| claims[i].0).sum();
        let level = left / wsum;
        let (sated, hungry): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&i| claims[i].1 <= claims[i].0 * level);
        if sated.is_empty() {
            for &i in &hungry {
                alloc[i] = claims[i].0 * level;
            }
            break;
        }
        for &i in &sated {
            alloc[i] = claims[i].1;
            left -= claims[i].1;
        }
        open = hungry;
    }
    alloc
}

/// Hierarchical weighted max-min throughput per stream `(priority, offered_bps)` on a
/// `link` of that many bits/s under `policy` (S1-S3): tiers share the link by their
/// shares, streams share their tier by weight `2^priority`, and whatever a tier or a
/// stream does not want goes to the others in proportion to their weights. Computed
/// here, independently of the scheduler.
pub fn oracle(policy: &Policy, link: f64, streams: &[(u8, f64)]) -> Vec<f64> {
    let weighted: Vec<(u8, f64, f64)> = streams
        .iter()
        .map(|&(p, d)| (p, f64::from(1u32 << p), d))
        .collect();
    weighted_oracle(policy, link, &weighted)
}

/// [`oracle`] for streams `(priority, weight, offered_bps)`: the priority picks the
/// tier, the weight (`2^priority` or an override) the share inside it.
pub fn weighted_oracle(policy: &Policy, link: f64, streams: &[(u8, f64, f64)]) -> Vec<f64> {
    let tiers = policy.tiers();
    let demand: Vec<f64> = (0..tiers.len())
        .map(|t| {
            streams
                .iter()
                .filter(|s| policy.tier_of(s.0) == t)
                .map(|s| s.2)
                .sum()
        })
        .collect();
    let claims: Vec<(f64, f64)> = tiers
        .iter()
        .zip(&demand)
        .map(|(t, &d)| (f64::from(t.share_percent), d))
        .collect();
    let tier_alloc = waterfill(link, &claims);
    let mut out = vec![0.0; streams.len()];
    for (t, &cap) in tier_alloc.iter().enumerate() {
        let members: Vec<usize> = (0..streams.len())
            .filter(|&i| policy.tier_of(streams[i].0) == t)
            .collect();
        let claims: Vec<(f64, f64)> = members
            .iter()
            .map(|&i| (streams[i].1, streams[i].2))
            .collect();
        for (k, a) in waterfill(cap, &claims).into_iter().enumerate() {
            out[members[k]] = a;
        }
    }
    out
}

/// The aging timeout of a policy in ns (`u64::MAX` when aging is off), whichever way
/// the policy spells it (a plain `u64`, or an `Option<u64>` where `None` is off).
pub trait AgingTimeoutNs {
    fn timeout_ns(&self) -> u64;
    /// Sets an aging timeout of `ns` (on).
    fn set_timeout_ns(&mut self, ns: u64);
}

impl AgingTimeoutNs for u64 {
    fn timeout_ns(&self) -> u64 {
        *self
    }
    fn set_timeout_ns(&mut self, ns: u64) {
        *self = ns;
    }
}

impl AgingTimeoutNs for Option<u64> {
    fn timeout_ns(&self) -> u64 {
        self.unwrap_or(u64::MAX)
    }
    fn set_timeout_ns(&mut self, ns: u64) {
        *self = Some(ns);
    }
}

/// The aging timeout of `policy` in ns (`u64::MAX` when off).
pub fn aging_timeout_ns(policy: &Policy) -> u64 {
    policy.spec().aging_timeout_ns.timeout_ns()
}
