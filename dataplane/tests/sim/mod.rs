//! Deterministic simulation harness: a virtual clock, traffic sources and a fake link
//! that serialises packets at a fixed rate. Everything is integer nanoseconds, so a run
//! is exactly repeatable.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use qos_dataplane::sched::{
    Next, Policy, PolicySpec, Rejection, Scheduler, SchedulerConfig, StreamConfig, StreamId,
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
                Offer::Rate { next_at, .. } => Some(next_at),
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
